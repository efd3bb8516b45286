//! `#[cached_method]`: a method of a cached model whose result is cached per (object, method,
//! arguments) on the object's flush list.

use proc_macro2::TokenStream;
use quote::{quote, quote_spanned};
use syn::parse::Parser;
use syn::punctuated::Punctuated;
use syn::spanned::Spanned;
use syn::{Error, Expr, FnArg, ImplItemFn, Lit, Meta, Pat, ReturnType, Token, Type};

/// The attribute's options: `timeout = <seconds>`, `tables = ["t", ..]`.
struct Options {
    timeout: TokenStream,
    tables: Vec<syn::LitStr>,
}

fn tables_help() -> &'static str {
    "`tables` lists the SQL tables the method reads besides its model's: `tables = [\"posts\"]`"
}

fn parse_options(args: TokenStream) -> syn::Result<Options> {
    let mut timeout = quote!(::caching_diesel::Timeout::Default);
    let mut tables = Vec::new();
    let metas = Punctuated::<Meta, Token![,]>::parse_terminated.parse2(args)?;
    for meta in metas {
        match &meta {
            Meta::NameValue(nv) if nv.path.is_ident("timeout") => match &nv.value {
                Expr::Lit(lit) => match &lit.lit {
                    Lit::Int(i) => {
                        let secs: u64 = i.base10_parse()?;
                        if secs == 0 {
                            return Err(Error::new(
                                i.span(),
                                "a timeout of 0 seconds caches nothing\n\
                                 help: give a number of seconds of at least 1, or leave the \
                                 timeout out to use the cache's default",
                            ));
                        }
                        timeout = quote!(::caching_diesel::Timeout::After(
                            ::std::time::Duration::from_secs(#secs)
                        ));
                    }
                    other => {
                        return Err(Error::new(
                            other.span(),
                            "`timeout` takes a whole number of seconds: `timeout = 60`",
                        ))
                    }
                },
                other => {
                    return Err(Error::new(
                        other.span(),
                        "`timeout` takes a whole number of seconds: `timeout = 60`",
                    ))
                }
            },
            Meta::NameValue(nv) if nv.path.is_ident("tables") => match &nv.value {
                Expr::Array(array) => {
                    for elem in &array.elems {
                        match elem {
                            Expr::Lit(syn::ExprLit {
                                lit: Lit::Str(s), ..
                            }) if !s.value().is_empty() => tables.push(s.clone()),
                            other => return Err(Error::new(other.span(), tables_help())),
                        }
                    }
                }
                other => return Err(Error::new(other.span(), tables_help())),
            },
            other => return Err(Error::new(
                other.span(),
                "unknown option of #[cached_method]\nhelp: the options are `timeout = <seconds>` \
                     and `tables = [\"table\", ..]`",
            )),
        }
    }
    Ok(Options { timeout, tables })
}

/// Whether a return type is a `Result` (by its last path segment: `Result`, `QueryResult`,
/// `io::Result`, ...): only its `Ok` values are cached.
fn is_result(ty: &Type) -> bool {
    match ty {
        Type::Path(p) => p
            .path
            .segments
            .last()
            .is_some_and(|s| s.ident.to_string().ends_with("Result")),
        Type::Paren(p) => is_result(&p.elem),
        Type::Group(g) => is_result(&g.elem),
        _ => false,
    }
}

pub fn expand(args: TokenStream, item: TokenStream) -> syn::Result<TokenStream> {
    let options = parse_options(args)?;
    let method: ImplItemFn = syn::parse2(item).map_err(|e| {
        Error::new(
            e.span(),
            "#[cached_method] goes on a method of a model's `impl` block: \
             `fn name(&self, cache: &Cache, ..) -> T`",
        )
    })?;
    let sig = &method.sig;
    if let Some(a) = &sig.asyncness {
        return Err(Error::new(
            a.span(),
            "#[cached_method] does not support `async fn` yet",
        ));
    }
    if let Some(p) = sig.generics.const_params().next() {
        return Err(Error::new(
            p.span(),
            "#[cached_method] methods cannot be generic over constants: the cache key would \
             not tell the instantiations apart",
        ));
    }
    if let Some(p) = sig.generics.type_params().next() {
        return Err(Error::new(
            p.span(),
            "#[cached_method] methods cannot be generic over types: the cache key would not \
             tell the instantiations apart\nhelp: write one method per type, or key the value \
             by hand with `Cache::cached_with`",
        ));
    }
    let ret = match &sig.output {
        ReturnType::Type(_, ty) => ty.as_ref(),
        ReturnType::Default => {
            return Err(Error::new(
                sig.paren_token.span.join(),
                "#[cached_method] caches a method's result, and this method returns nothing\n\
                 help: return the value to cache, e.g. `-> usize`",
            ))
        }
    };
    let mut inputs = sig.inputs.iter();
    match inputs.next() {
        Some(FnArg::Receiver(r)) if r.reference.is_some() && r.mutability.is_none() => {}
        Some(FnArg::Receiver(r)) => {
            return Err(Error::new(
                r.span(),
                "#[cached_method] needs `&self`: the result is cached per object, and a method \
                 that changes or consumes the object cannot be served from the cache",
            ))
        }
        _ => {
            return Err(Error::new(
                sig.ident.span(),
                "#[cached_method] goes on a method taking `&self` (the object whose flush list \
                 holds the result), then the cache: `fn name(&self, cache: &Cache, ..)`",
            ))
        }
    }
    let source = match inputs.next() {
        Some(FnArg::Typed(t)) => match &*t.pat {
            Pat::Ident(id) => id.ident.clone(),
            other => return Err(Error::new(
                other.span(),
                "the cache argument of a #[cached_method] must be a plain name: `cache: &Cache`",
            )),
        },
        _ => {
            return Err(Error::new(
                sig.inputs.span(),
                "#[cached_method] needs the cache as the argument after `&self`: a `&Cache` or \
                 a `&mut CachedConnection<_>`: `fn name(&self, cache: &Cache, ..)`",
            ))
        }
    };
    let mut parts = Vec::new();
    for arg in inputs {
        let FnArg::Typed(t) = arg else { continue };
        match &*t.pat {
            Pat::Ident(id) if id.by_ref.is_none() => parts.push(id.ident.clone()),
            other => {
                return Err(Error::new(
                    other.span(),
                    "arguments of a #[cached_method] are part of its cache key and must be plain \
                     names (`id: i32`), not patterns",
                ))
            }
        }
    }
    let timeout = options.timeout;
    let tables = options.tables.iter().map(|t| t.value().to_lowercase());
    let attrs = &method.attrs;
    let vis = &method.vis;
    let defaultness = &method.defaultness;
    let block = &method.block;
    let call = if is_result(ret) {
        quote!(::caching_diesel::__private::try_cached_method)
    } else {
        quote!(::caching_diesel::__private::cached_method)
    };
    // The call is prepared (cache, transaction state, key) before the body borrows the
    // source; the other arguments are serialized into the key (spanned at them: a type
    // without `Serialize` is reported there). The marker function's type name is the
    // method's full path (module, impl, trait), so two methods never share a key. Names the
    // expansion introduces are hygienic (mixed-site): an argument named `call` is untouched.
    let key_parts = parts
        .iter()
        .map(|p| quote_spanned!(p.span()=> ::caching_diesel::__private::KeyArg::new(&#p)));
    let source_ref = quote_spanned!(source.span()=> &#source);
    let call_ident = syn::Ident::new("__cached_method_call", proc_macro2::Span::mixed_site());
    let marker = syn::Ident::new("__cached_method_marker", proc_macro2::Span::mixed_site());
    Ok(quote! {
        #(#attrs)*
        #vis #defaultness #sig {
            fn #marker() {}
            let #call_ident = ::caching_diesel::__private::MethodCall::new(
                #source_ref,
                self,
                ::std::any::type_name_of_val(&#marker),
                &[#(#key_parts),*],
                &[#(#tables),*],
                #timeout,
            );
            #call(#call_ident, move || -> #ret #block)
        }
    })
}
