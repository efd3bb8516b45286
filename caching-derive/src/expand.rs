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
    // Key parts are `ToString::to_string(&field)`, spanned at the field's type: a type without
    // `Display` is reported on the field, not on `#[derive(Cached)]`.
    let pk = m.primary_key.iter().map(|k| {
        let field = k.spanned_field();
        quote_spanned!(k.ty_span=> ::std::string::ToString::to_string(&self.#field))
    });
    let fks = m.foreign_keys.iter().map(|fk| {
        let field = fk.key.spanned_field();
        let parent = &fk.parent;
        let table = quote!(<#parent as ::caching_diesel::CachedModel>::TABLE);
        if fk.nullable {
            let part = quote_spanned!(fk.key.ty_span=> ::std::string::ToString::to_string(v));
            quote! {
                if let ::core::option::Option::Some(v) = &self.#field {
                    out.push(::caching_diesel::ObjectKey::new(#table, &[#part]));
                }
            }
        } else {
            let part =
                quote_spanned!(fk.key.ty_span=> ::std::string::ToString::to_string(&self.#field));
            quote! {
                out.push(::caching_diesel::ObjectKey::new(#table, &[#part]));
            }
        }
    });
    quote! {
        const _: () = {
            impl #impl_generics ::caching_diesel::CachedModel for #ident #ty_generics #where_clause {
                const TABLE: &'static str = #model_name;
                const FINGERPRINT: &'static str = #fingerprint;

                fn object_key(&self) -> ::caching_diesel::ObjectKey {
                    ::caching_diesel::ObjectKey::new(
                        #model_name,
                        &[#(#pk),*],
                    )
                }

                fn foreign_keys(&self) -> ::std::vec::Vec<::caching_diesel::ObjectKey> {
                    #[allow(unused_mut)]
                    let mut out = ::std::vec::Vec::new();
                    #(#fks)*
                    out
                }
            }

            impl #impl_generics ::caching_diesel::CacheableRow for #ident #ty_generics #where_clause {
                const MODEL: bool = true;

                fn tables(out: &mut ::std::vec::Vec<&'static str>) {
                    out.push(#model_name);
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
            }
        };
    }
}
