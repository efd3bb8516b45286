//! The parsed model: everything code generation needs, validated, with errors at the
//! offending span.

use proc_macro2::Span;
use syn::ext::IdentExt;
use syn::spanned::Spanned;
use syn::{Data, DeriveInput, Fields, Ident, Path, Type};

use crate::attrs::{parse_column_name, parse_struct_attrs};

/// A field the generated code reads (a primary key part or a foreign key), with the span of
/// its type, where a type error in the generated code (no `Display`) is reported.
pub struct KeyField {
    pub field: Ident,
    pub ty: Type,
    pub ty_span: Span,
}

impl KeyField {
    /// The field name, spanned at its type (so the whole generated read of the field is).
    pub fn spanned_field(&self) -> Ident {
        let mut field = self.field.clone();
        field.set_span(self.ty_span);
        field
    }
}

pub struct ForeignKey {
    pub key: KeyField,
    pub parent: Path,
    pub nullable: bool,
}

/// How a column's values compare (see `caching_diesel::ColumnClass`), from the field's type.
#[derive(Clone, Copy)]
pub enum Class {
    Int,
    Float,
    Text,
    Opaque,
}

impl Class {
    pub fn variant(self) -> &'static str {
        match self {
            Class::Int => "Int",
            Class::Float => "Float",
            Class::Text => "Text",
            Class::Opaque => "Opaque",
        }
    }
}

/// A column with a predicate class: its field and its column name.
pub struct PredicateColumn {
    pub key: KeyField,
    pub column: String,
    pub class: Class,
}

pub struct Model<'a> {
    pub input: &'a DeriveInput,
    pub model_name: String,
    pub sql_table: String,
    pub columns: Vec<PredicateColumn>,
    pub primary_key: Vec<KeyField>,
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

/// The class of a field type: the last path segment (through `Option<..>`, references and
/// `Box`/`Cow`), for the types whose values the cache can compare. Anything else (dates,
/// decimals, UUIDs, enums, newtypes) is opaque: conditions on it are never used.
fn class_of(ty: &Type) -> Class {
    match ty {
        Type::Reference(r) => class_of(&r.elem),
        Type::Group(g) => class_of(&g.elem),
        Type::Paren(p) => class_of(&p.elem),
        Type::Path(p) if p.qself.is_none() => {
            let Some(last) = p.path.segments.last() else {
                return Class::Opaque;
            };
            let name = last.ident.to_string();
            if matches!(name.as_str(), "Option" | "Box" | "Cow") {
                if let syn::PathArguments::AngleBracketed(args) = &last.arguments {
                    if let Some(inner) = args.args.iter().find_map(|a| match a {
                        syn::GenericArgument::Type(t) => Some(t),
                        _ => None,
                    }) {
                        return class_of(inner);
                    }
                }
                return Class::Opaque;
            }
            match name.as_str() {
                "i8" | "i16" | "i32" | "i64" | "u8" | "u16" | "u32" | "u64" | "bool" => Class::Int,
                "f32" | "f64" => Class::Float,
                "String" | "str" => Class::Text,
                _ => Class::Opaque,
            }
        }
        _ => Class::Opaque,
    }
}

fn is_option(ty: &Type) -> bool {
    match ty {
        Type::Path(p) => p.path.segments.last().is_some_and(|s| {
            s.ident == "Option" && matches!(s.arguments, syn::PathArguments::AngleBracketed(_))
        }),
        _ => false,
    }
}

/// One named field: its identifier, the column it maps to (`#[diesel(column_name = ...)]`, else
/// the field name) and its type.
struct FieldInfo<'a> {
    ident: &'a Ident,
    column: String,
    ty: &'a Type,
}

impl FieldInfo<'_> {
    fn key_field(&self) -> KeyField {
        KeyField {
            field: self.ident.clone(),
            ty: self.ty.clone(),
            ty_span: self.ty.span(),
        }
    }
}

/// The help line of an error about a missing column: `` the columns of `T` are `a`, `b` ``
/// (a renamed field shows its name: `` `user_id` (field `uid`) ``).
fn fields_help(name: &Ident, fields: &[FieldInfo<'_>]) -> String {
    if fields.is_empty() {
        return format!("`{name}` has no fields");
    }
    let list = fields
        .iter()
        .map(|f| {
            let ident = f.ident.unraw().to_string();
            if ident == f.column {
                format!("`{ident}`")
            } else {
                format!("`{}` (field `{ident}`)", f.column)
            }
        })
        .collect::<Vec<_>>()
        .join(", ");
    format!("the columns of `{name}` are {list}")
}

fn path_text(path: &Path) -> String {
    quote::quote!(#path).to_string().replace(' ', "")
}

impl<'a> Model<'a> {
    pub fn from_input(input: &'a DeriveInput) -> syn::Result<Self> {
        let name = &input.ident;
        let named = match &input.data {
            Data::Struct(s) => match &s.fields {
                Fields::Named(named) => &named.named,
                Fields::Unnamed(unnamed) => {
                    return Err(syn::Error::new(
                        unnamed.paren_token.span.join(),
                        format!(
                            "#[derive(Cached)] needs named fields, not a tuple struct\n\
                             help: a cached model is a Diesel model with named fields: \
                             `struct {name} {{ id: i32, ... }}`"
                        ),
                    ))
                }
                Fields::Unit => {
                    return Err(syn::Error::new(
                        name.span(),
                        format!(
                            "#[derive(Cached)] needs named fields, and the unit struct `{name}` has none\n\
                             help: a cached model needs at least its primary key: \
                             `struct {name} {{ id: i32, ... }}`"
                        ),
                    ))
                }
            },
            Data::Enum(e) => {
                return Err(syn::Error::new(
                    e.enum_token.span,
                    "#[derive(Cached)] supports structs with named fields only, not enums",
                ))
            }
            Data::Union(u) => {
                return Err(syn::Error::new(
                    u.union_token.span,
                    "#[derive(Cached)] supports structs with named fields only, not unions",
                ))
            }
        };
        let attrs = parse_struct_attrs(&input.attrs)?;
        let mut fields = Vec::new();
        for f in named {
            let ident = f.ident.as_ref().expect("named field");
            let column = parse_column_name(&f.attrs)?.unwrap_or_else(|| ident.unraw().to_string());
            fields.push(FieldInfo {
                ident,
                column,
                ty: &f.ty,
            });
        }
        // Diesel's primary_key and foreign_key name columns: a field renamed with
        // `#[diesel(column_name = ...)]` is found by its column.
        let find = |column: &Ident| {
            let column = column.unraw().to_string();
            fields.iter().find(|f| f.column == column)
        };

        let table = match &attrs.table_name {
            Some(path) => path
                .segments
                .last()
                .map(|s| s.ident.unraw().to_string())
                .ok_or_else(|| syn::Error::new(Span::call_site(), "empty table_name"))?,
            None => format!("{}s", snake_case(&name.unraw().to_string())),
        };
        let model_name = attrs
            .model
            .as_ref()
            .map(|l| l.value())
            .unwrap_or_else(|| table.clone());
        let sql_table = attrs
            .sql_table
            .as_ref()
            .map_or_else(|| table.clone(), |l| l.value())
            .to_lowercase();
        let columns = fields
            .iter()
            .map(|f| PredicateColumn {
                key: f.key_field(),
                column: f.column.to_lowercase(),
                class: class_of(f.ty),
            })
            .collect();

        let primary_key = match attrs.primary_key {
            Some(pk) => {
                if pk.columns.is_empty() {
                    return Err(syn::Error::new(
                        pk.keyword.span(),
                        format!(
                            "primary_key() names no column\nhelp: {}",
                            fields_help(name, &fields)
                        ),
                    ));
                }
                let mut keys = Vec::new();
                for k in &pk.columns {
                    let Some(f) = find(k) else {
                        return Err(syn::Error::new(
                            k.span(),
                            format!(
                                "primary key `{}` is not a column of `{name}`\nhelp: {}",
                                k.unraw(),
                                fields_help(name, &fields)
                            ),
                        ));
                    };
                    keys.push(f.key_field());
                }
                keys
            }
            None => match find(&Ident::new("id", Span::call_site())) {
                Some(f) => vec![f.key_field()],
                None => {
                    return Err(syn::Error::new(
                        name.span(),
                        format!(
                            "`{name}` has no `id` column and declares no primary key\n\
                             help: name the primary key with #[diesel(primary_key(column, ...))]; {}",
                            fields_help(name, &fields)
                        ),
                    ))
                }
            },
        };

        let mut foreign_keys: Vec<ForeignKey> = Vec::new();
        for b in attrs.belongs_to {
            let parent_ident = &b
                .parent
                .segments
                .last()
                .expect("a path has a segment")
                .ident;
            let (column, explicit) = match b.foreign_key {
                Some(fk) => (fk, true),
                None => {
                    let default = format!("{}_id", snake_case(&parent_ident.unraw().to_string()));
                    (Ident::new(&default, parent_ident.span()), false)
                }
            };
            let Some(f) = find(&column) else {
                let parent = path_text(&b.parent);
                let column = column.unraw();
                let message = if explicit {
                    format!(
                        "foreign key `{column}` of belongs_to({parent}) is not a column of `{name}`\nhelp: {}",
                        fields_help(name, &fields)
                    )
                } else {
                    format!(
                        "belongs_to({parent}) has no foreign_key, and the default `{column}` is not a column \
                         of `{name}`\n\
                         help: name the column: belongs_to({parent}, foreign_key = column); {}",
                        fields_help(name, &fields)
                    )
                };
                return Err(syn::Error::new(column.span(), message));
            };
            if foreign_keys.iter().any(|fk| fk.key.field == *f.ident) {
                continue;
            }
            foreign_keys.push(ForeignKey {
                nullable: is_option(f.ty),
                key: f.key_field(),
                parent: b.parent,
            });
        }

        let mut fingerprint = format!("{name}{{");
        for f in &fields {
            let ty = f.ty;
            fingerprint.push_str(&format!(
                "{}:{};",
                f.ident,
                quote::quote!(#ty).to_string().replace(' ', "")
            ));
        }
        fingerprint.push('}');

        Ok(Model {
            input,
            model_name,
            sql_table,
            columns,
            primary_key,
            foreign_keys,
            fingerprint,
        })
    }
}
