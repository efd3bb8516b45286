//! The parsed model: everything code generation needs, validated, with errors at the
//! offending span.

use proc_macro2::Span;
use syn::{Data, DeriveInput, Fields, Ident, Path, Type};

use crate::attrs::parse_struct_attrs;

pub struct ForeignKey {
    pub field: Ident,
    pub parent: Path,
    pub nullable: bool,
}

pub struct Model<'a> {
    pub input: &'a DeriveInput,
    pub model_name: String,
    pub primary_key: Vec<Ident>,
    pub foreign_keys: Vec<ForeignKey>,
    pub fingerprint: String,
}

fn snake_case(name: &str) -> String {
    let mut out = String::new();
    for (i, c) in name.chars().enumerate() {
        if c.is_uppercase() {
            if i > 0 {
                out.push('_');
            }
            out.extend(c.to_lowercase());
        } else {
            out.push(c);
        }
    }
    out
}

fn is_option(ty: &Type) -> bool {
    match ty {
        Type::Path(p) => p
            .path
            .segments
            .last()
            .is_some_and(|s| s.ident == "Option" && matches!(s.arguments, syn::PathArguments::AngleBracketed(_))),
        _ => false,
    }
}

impl<'a> Model<'a> {
    pub fn from_input(input: &'a DeriveInput) -> syn::Result<Self> {
        let fields = match &input.data {
            Data::Struct(s) => match &s.fields {
                Fields::Named(named) => &named.named,
                Fields::Unnamed(_) | Fields::Unit => {
                    return Err(syn::Error::new(
                        input.ident.span(),
                        "#[derive(Cached)] needs a struct with named fields (a Diesel model)",
                    ))
                }
            },
            Data::Enum(e) => {
                return Err(syn::Error::new(
                    e.enum_token.span,
                    "#[derive(Cached)] supports structs only, not enums",
                ))
            }
            Data::Union(u) => {
                return Err(syn::Error::new(
                    u.union_token.span,
                    "#[derive(Cached)] supports structs only, not unions",
                ))
            }
        };
        let attrs = parse_struct_attrs(&input.attrs)?;
        let find = |ident: &Ident| fields.iter().find(|f| f.ident.as_ref() == Some(ident));

        let table = match &attrs.table_name {
            Some(path) => path
                .segments
                .last()
                .map(|s| s.ident.to_string())
                .ok_or_else(|| syn::Error::new(Span::call_site(), "empty table_name"))?,
            None => format!("{}s", snake_case(&input.ident.to_string())),
        };
        let model_name = attrs.model.as_ref().map(|l| l.value()).unwrap_or(table);

        let primary_key = match attrs.primary_key {
            Some(keys) => {
                if keys.is_empty() {
                    return Err(syn::Error::new(input.ident.span(), "primary_key() names no field"));
                }
                for k in &keys {
                    if find(k).is_none() {
                        return Err(syn::Error::new(
                            k.span(),
                            format!("primary key `{k}` is not a field of `{}`", input.ident),
                        ));
                    }
                }
                keys
            }
            None => {
                let id = Ident::new("id", Span::call_site());
                if find(&id).is_none() {
                    return Err(syn::Error::new(
                        input.ident.span(),
                        format!(
                            "`{}` has no `id` field: name its primary key with #[diesel(primary_key(field, ...))]",
                            input.ident
                        ),
                    ));
                }
                vec![id]
            }
        };

        let mut foreign_keys = Vec::new();
        for b in attrs.belongs_to {
            let field = match b.foreign_key {
                Some(fk) => fk,
                None => {
                    let parent = b.parent.segments.last().map(|s| s.ident.to_string()).unwrap_or_default();
                    Ident::new(&format!("{}_id", snake_case(&parent)), b.parent.segments.last().map(|s| s.ident.span()).unwrap_or_else(Span::call_site))
                }
            };
            let Some(f) = find(&field) else {
                let parent = &b.parent;
                return Err(syn::Error::new(
                    field.span(),
                    format!(
                        "foreign key `{field}` is not a field of `{}` (set it with belongs_to({}, foreign_key = column))",
                        input.ident,
                        quote::quote!(#parent).to_string().replace(' ', "")
                    ),
                ));
            };
            if foreign_keys.iter().any(|fk: &ForeignKey| fk.field == field) {
                continue;
            }
            foreign_keys.push(ForeignKey {
                nullable: is_option(&f.ty),
                field,
                parent: b.parent,
            });
        }

        let mut fingerprint = format!("{}{{", input.ident);
        for f in fields {
            let name = f.ident.as_ref().map(|i| i.to_string()).unwrap_or_default();
            let ty = &f.ty;
            fingerprint.push_str(&format!("{name}:{};", quote::quote!(#ty).to_string().replace(' ', "")));
        }
        fingerprint.push('}');

        Ok(Model {
            input,
            model_name,
            primary_key,
            foreign_keys,
            fingerprint,
        })
    }
}
