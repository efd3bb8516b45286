//! Attribute parsing: `#[diesel(...)]` (only the parts we need; everything else is Diesel's
//! business and skipped) and `#[cached(...)]`.

use syn::ext::IdentExt;
use syn::parse::{discouraged::Speculative, Parse, ParseStream};
use syn::punctuated::Punctuated;
use syn::{parenthesized, Ident, LitStr, Path, Token};

/// One `belongs_to(Parent, foreign_key = col)`.
pub struct BelongsTo {
    pub parent: Path,
    pub foreign_key: Option<Ident>,
}

/// One `primary_key(a, b)`: the keyword (for errors about the list as a whole) and the
/// columns.
pub struct PrimaryKey {
    pub keyword: Ident,
    pub columns: Vec<Ident>,
}

/// What the attributes of a struct say.
#[derive(Default)]
pub struct StructAttrs {
    pub table_name: Option<Path>,
    pub primary_key: Option<PrimaryKey>,
    pub belongs_to: Vec<BelongsTo>,
    pub model: Option<LitStr>,
    /// `#[cached(sql_table = "...")]`: the table's name in SQL, when Diesel's `table!` renames
    /// it (`#[sql_name = "..."]`).
    pub sql_table: Option<LitStr>,
}

fn parse_belongs_to(input: ParseStream) -> syn::Result<BelongsTo> {
    let content;
    parenthesized!(content in input);
    let parent: Path = content.parse()?;
    let mut foreign_key = None;
    while content.peek(Token![,]) {
        content.parse::<Token![,]>()?;
        if content.is_empty() {
            break;
        }
        let name: Ident = content.parse()?;
        content.parse::<Token![=]>()?;
        if name == "foreign_key" {
            foreign_key = Some(content.parse()?);
        } else {
            return Err(syn::Error::new(
                name.span(),
                format!(
                    "unknown belongs_to option `{name}`\nhelp: expected `foreign_key = column`"
                ),
            ));
        }
    }
    Ok(BelongsTo {
        parent,
        foreign_key,
    })
}

/// Whether `input` is at the end of one option (before `,` or at the end of the list).
fn at_option_end(input: ParseStream) -> bool {
    input.is_empty() || input.peek(Token![,])
}

/// Skips one Diesel option we do not read (`check_for_backend(..)`, `treat_none_as_null = true`,
/// `base_query_type = dsl::Select<t, c>`, ...). A value is read as a type or an expression
/// when it is one, so commas inside generics (`Eq<a, b>`) do not end it early; anything else is
/// skipped token by token up to the next top-level comma (Diesel itself reports real mistakes).
fn skip_rest(input: ParseStream) -> syn::Result<()> {
    if input.peek(syn::token::Paren) {
        let _content;
        parenthesized!(_content in input);
        let _: proc_macro2::TokenStream = _content.parse()?;
    } else if input.peek(Token![=]) {
        input.parse::<Token![=]>()?;
        let fork = input.fork();
        if fork.parse::<syn::Type>().is_ok() && at_option_end(&fork) {
            input.advance_to(&fork);
            return Ok(());
        }
        let fork = input.fork();
        if fork.parse::<syn::Expr>().is_ok() && at_option_end(&fork) {
            input.advance_to(&fork);
            return Ok(());
        }
        while !at_option_end(input) {
            let _: proc_macro2::TokenTree = input.parse()?;
        }
    }
    Ok(())
}

struct DieselOptions(StructAttrs);

impl Parse for DieselOptions {
    fn parse(input: ParseStream) -> syn::Result<Self> {
        let mut out = StructAttrs::default();
        while !input.is_empty() {
            let name: Ident = input.call(Ident::parse_any)?;
            match name.to_string().as_str() {
                "table_name" => {
                    input.parse::<Token![=]>()?;
                    out.table_name = Some(input.parse()?);
                }
                "primary_key" => {
                    let content;
                    parenthesized!(content in input);
                    let keys = Punctuated::<Ident, Token![,]>::parse_terminated(&content)?;
                    out.primary_key = Some(PrimaryKey {
                        keyword: name,
                        columns: keys.into_iter().collect(),
                    });
                }
                "belongs_to" => out.belongs_to.push(parse_belongs_to(input)?),
                _ => skip_rest(input)?,
            }
            if input.is_empty() {
                break;
            }
            input.parse::<Token![,]>()?;
        }
        Ok(DieselOptions(out))
    }
}

struct CachedOptions(StructAttrs);

impl Parse for CachedOptions {
    fn parse(input: ParseStream) -> syn::Result<Self> {
        let mut out = StructAttrs::default();
        while !input.is_empty() {
            let name: Ident = input.parse()?;
            match name.to_string().as_str() {
                "model" => {
                    input.parse::<Token![=]>()?;
                    let lit: LitStr = input.parse()?;
                    if lit.value().is_empty() {
                        return Err(syn::Error::new(
                            lit.span(),
                            "the model name must not be empty\nhelp: remove `model = \"\"` to use the table name",
                        ));
                    }
                    out.model = Some(lit);
                }
                "sql_table" => {
                    input.parse::<Token![=]>()?;
                    let lit: LitStr = input.parse()?;
                    if lit.value().trim().is_empty() {
                        return Err(syn::Error::new(
                            lit.span(),
                            "the SQL table name must not be empty\nhelp: remove `sql_table = \"\"` to use the table name",
                        ));
                    }
                    out.sql_table = Some(lit);
                }
                "belongs_to" => out.belongs_to.push(parse_belongs_to(input)?),
                other => {
                    return Err(syn::Error::new(
                        name.span(),
                        format!("unknown #[cached] option `{other}`\nhelp: expected `model = \"name\"`, `sql_table = \"name\"` or `belongs_to(Parent, foreign_key = column)`"),
                    ))
                }
            }
            if input.is_empty() {
                break;
            }
            input.parse::<Token![,]>()?;
        }
        Ok(CachedOptions(out))
    }
}

/// The `column_name = ...` of a field's `#[diesel(...)]` attributes (an identifier or a string,
/// as Diesel accepts), if any; every other field option is skipped.
pub fn parse_column_name(attrs: &[syn::Attribute]) -> syn::Result<Option<String>> {
    let mut out = None;
    for attr in attrs.iter().filter(|a| a.path().is_ident("diesel")) {
        attr.parse_args_with(|input: ParseStream| {
            while !input.is_empty() {
                let name: Ident = input.call(Ident::parse_any)?;
                if name == "column_name" {
                    input.parse::<Token![=]>()?;
                    out = Some(if input.peek(LitStr) {
                        input.parse::<LitStr>()?.value()
                    } else {
                        input.call(Ident::parse_any)?.unraw().to_string()
                    });
                } else {
                    skip_rest(input)?;
                }
                if input.is_empty() {
                    break;
                }
                input.parse::<Token![,]>()?;
            }
            Ok(())
        })?;
    }
    Ok(out)
}

/// Reads every `#[diesel]` and `#[cached]` attribute of a struct.
pub fn parse_struct_attrs(attrs: &[syn::Attribute]) -> syn::Result<StructAttrs> {
    let mut out = StructAttrs::default();
    for attr in attrs {
        let opts = if attr.path().is_ident("diesel") {
            attr.parse_args::<DieselOptions>()?.0
        } else if attr.path().is_ident("cached") {
            attr.parse_args::<CachedOptions>()?.0
        } else {
            continue;
        };
        if opts.table_name.is_some() {
            out.table_name = opts.table_name;
        }
        if opts.primary_key.is_some() {
            out.primary_key = opts.primary_key;
        }
        if opts.model.is_some() {
            out.model = opts.model;
        }
        if opts.sql_table.is_some() {
            out.sql_table = opts.sql_table;
        }
        out.belongs_to.extend(opts.belongs_to);
    }
    Ok(out)
}
