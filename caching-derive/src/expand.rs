//! Code generation from a parsed [`Model`]. Every path is absolute (`::caching_diesel::...`)
//! and the impls sit in an anonymous const, so they cannot collide with user names.

use proc_macro2::TokenStream;
use quote::{quote, quote_spanned};

use crate::model::Model;

pub fn expand(m: &Model<'_>) -> TokenStream {
    let ident = &m.input.ident;
    let (impl_generics, ty_generics, where_clause) = m.input.generics.split_for_impl();
    let model_name = &m.model_name;
    let fingerprint = &m.fingerprint;
    // Key parts are the fields, coerced to `&dyn Display` (written into the key,
    // `ObjectKey::of`; a coercion, not an `as` cast, which `trivial_casts` would flag in the
    // user's crate), spanned at the field's type: a type without `Display` is reported on the
    // field, not on `#[derive(Cached)]`.
    let pk = m.primary_key.iter().map(|k| {
        let field = k.spanned_field();
        quote_spanned!(k.ty_span=> &self.#field)
    });
    // A key of plain integers is written without `Display` (`ObjectKey::of_ints`: the same
    // key, at a fraction of the cost; a fill builds one per row and per foreign key).
    let int_pk: Option<Vec<TokenStream>> = m
        .primary_key
        .iter()
        .map(|k| {
            let field = k.spanned_field();
            int_part(&k.ty, quote_spanned!(k.ty_span=> self.#field))
        })
        .collect();
    let object_key = match int_pk {
        Some(parts) => quote!(::caching_diesel::ObjectKey::of_ints(#model_name, &[#(#parts),*])),
        None => quote!(::caching_diesel::ObjectKey::of(#model_name, &[#(#pk),*])),
    };
    let fks = m.foreign_keys.iter().map(|fk| {
        let field = fk.key.spanned_field();
        let parent = &fk.parent;
        let table = quote!(<#parent as ::caching_diesel::CachedModel>::TABLE);
        if fk.nullable {
            let key = key_of(
                &table,
                option_inner(&fk.key.ty),
                quote_spanned!(fk.key.ty_span=> *v),
                quote_spanned!(fk.key.ty_span=> v),
            );
            quote! {
                if let ::core::option::Option::Some(v) = &self.#field {
                    out.push(#key);
                }
            }
        } else {
            let key = key_of(
                &table,
                Some(&fk.key.ty),
                quote_spanned!(fk.key.ty_span=> self.#field),
                quote_spanned!(fk.key.ty_span=> &self.#field),
            );
            quote! {
                out.push(#key);
            }
        }
    });
    let fk_count = m.foreign_keys.len();
    let sql_table = &m.sql_table;
    let column_consts = m.columns.iter().map(|c| {
        let column = &c.column;
        let class = quote::format_ident!("{}", c.class.variant());
        quote!((#column, ::caching_diesel::ColumnClass::#class))
    });
    // Values of the comparable columns, as serde sees them (`Serialize` is required of every
    // cached model already), spanned at the field's type.
    let predicate_values = m
        .columns
        .iter()
        .filter(|c| !matches!(c.class, crate::model::Class::Opaque))
        .map(|c| {
            let column = &c.column;
            let field = c.key.spanned_field();
            quote_spanned!(c.key.ty_span=> ::caching_diesel::__private::push_predicate_value(out, #column, &self.#field);)
        });
    // Fetch by id needs one primary-key column.
    let fetch_by_id = match m.primary_key.as_slice() {
        [k] => {
            let field = k.spanned_field();
            let ty = &k.ty;
            quote! {
                impl #impl_generics ::caching_diesel::FetchById for #ident #ty_generics #where_clause {
                    type Id = #ty;
                    fn id(&self) -> &Self::Id {
                        &self.#field
                    }
                }
            }
        }
        _ => quote!(),
    };
    quote! {
        const _: () = {
            #fetch_by_id

            impl #impl_generics ::caching_diesel::CachedModel for #ident #ty_generics #where_clause {
                const TABLE: &'static str = #model_name;
                const SQL_TABLE: &'static str = #sql_table;
                const FINGERPRINT: &'static str = #fingerprint;
                const COLUMNS: &'static [(&'static str, ::caching_diesel::ColumnClass)] = &[#(#column_consts),*];

                fn predicate_values(&self, out: &mut ::std::vec::Vec<(&'static str, ::caching_diesel::core::PredicateValue)>) {
                    #(#predicate_values)*
                }

                fn object_key(&self) -> ::caching_diesel::ObjectKey {
                    #object_key
                }

                fn foreign_keys(&self) -> ::std::vec::Vec<::caching_diesel::ObjectKey> {
                    #[allow(unused_mut)]
                    let mut out = ::std::vec::Vec::with_capacity(#fk_count);
                    #(#fks)*
                    out
                }
            }

            impl #impl_generics ::caching_diesel::CacheableRow for #ident #ty_generics #where_clause {
                const MODEL: bool = true;

                fn tables(out: &mut ::std::vec::Vec<&'static str>) {
                    out.push(#model_name);
                }

                fn models(out: &mut ::std::vec::Vec<::caching_diesel::ModelInfo>) {
                    out.push(::caching_diesel::ModelInfo::of::<Self>());
                }

                fn fingerprint(key: &mut ::caching_diesel::__private::QueryKeyBuilder) {
                    key.part("model", #fingerprint.as_bytes());
                }

                fn register(
                    &self,
                    keys: &::caching_diesel::__private::KeySpace,
                    key: &str,
                    regs: &mut ::caching_diesel::__private::Registrations,
                ) {
                    ::caching_diesel::__private::register_model(self, keys, key, regs)
                }
            }

            impl #impl_generics ::caching_diesel::core::FlushTarget for #ident #ty_generics #where_clause {
                fn flush_key(&self, keys: &::caching_diesel::__private::KeySpace) -> ::core::option::Option<::std::string::String> {
                    ::core::option::Option::Some(keys.flush_key(&::caching_diesel::CachedModel::object_key(self)))
                }

                fn tables(&self) -> ::std::vec::Vec<::std::string::String> {
                    ::std::vec![::std::string::ToString::to_string(#model_name)]
                }

                fn parents(&self) -> ::std::vec::Vec<::caching_diesel::ObjectKey> {
                    ::caching_diesel::CachedModel::foreign_keys(self)
                }
            }
        };
    }
}

/// `CacheableRow` for a plain row type: no model, no flush-list registration; the fingerprint
/// is the type's name and its fields' names and types.
pub fn expand_row(input: &syn::DeriveInput) -> TokenStream {
    let ident = &input.ident;
    let (impl_generics, ty_generics, where_clause) = input.generics.split_for_impl();
    let mut fingerprint = format!("{ident}{{");
    if let syn::Data::Struct(s) = &input.data {
        for (i, f) in s.fields.iter().enumerate() {
            let ty = &f.ty;
            let name = f
                .ident
                .as_ref()
                .map_or_else(|| i.to_string(), ToString::to_string);
            fingerprint.push_str(&format!(
                "{name}:{};",
                quote!(#ty).to_string().replace(' ', "")
            ));
        }
    }
    fingerprint.push('}');
    quote! {
        const _: () = {
            impl #impl_generics ::caching_diesel::CacheableRow for #ident #ty_generics #where_clause {
                const MODEL: bool = false;

                fn tables(_: &mut ::std::vec::Vec<&'static str>) {}

                fn fingerprint(key: &mut ::caching_diesel::__private::QueryKeyBuilder) {
                    key.part("row", #fingerprint.as_bytes());
                }

                fn register(
                    &self,
                    _: &::caching_diesel::__private::KeySpace,
                    _: &str,
                    _: &mut ::caching_diesel::__private::Registrations,
                ) {
                }
            }
        };
    }
}

/// The object key of a one-part key in `table`: `value` (of type `ty`) written as an integer
/// when [`int_part`] takes it, else `reference` written through `Display`.
fn key_of(
    table: &TokenStream,
    ty: Option<&syn::Type>,
    value: TokenStream,
    reference: TokenStream,
) -> TokenStream {
    match ty.and_then(|t| int_part(t, value)) {
        Some(part) => quote!(::caching_diesel::ObjectKey::of_ints(#table, &[#part])),
        None => quote!(::caching_diesel::ObjectKey::of(#table, &[#reference])),
    }
}

/// `value` (of type `ty`) as an `i64` key part, if `ty` is written as a primitive integer
/// type that converts to `i64` without loss (`i64` itself is used as it is: a conversion to
/// its own type would be flagged by clippy in the user's crate). Anything else, aliases
/// included, is written through `Display`, which gives the same key.
fn int_part(ty: &syn::Type, value: TokenStream) -> Option<TokenStream> {
    let syn::Type::Path(p) = ty else {
        return None;
    };
    if p.qself.is_some() || p.path.segments.len() != 1 {
        return None;
    }
    let seg = &p.path.segments[0];
    if !seg.arguments.is_empty() {
        return None;
    }
    match seg.ident.to_string().as_str() {
        "i64" => Some(value),
        "i8" | "i16" | "i32" | "u8" | "u16" | "u32" => {
            Some(quote!(::core::primitive::i64::from(#value)))
        }
        _ => None,
    }
}

/// The `T` of a type written `Option<T>`.
fn option_inner(ty: &syn::Type) -> Option<&syn::Type> {
    let syn::Type::Path(p) = ty else {
        return None;
    };
    let seg = p.path.segments.last()?;
    let syn::PathArguments::AngleBracketed(args) = &seg.arguments else {
        return None;
    };
    args.args.iter().find_map(|a| match a {
        syn::GenericArgument::Type(t) => Some(t),
        _ => None,
    })
}
