//! `#[derive(Command)]`: the implementation of `clusterfy::Command` from one attribute.
//!
//! ```
//! use clusterfy::Command;
//! use serde::{Deserialize, Serialize};
//!
//! /// Asks a worker for its clock.
//! #[derive(Serialize, Deserialize, Command)]
//! #[command(name = "get_timestamp", target = worker, reply = u64)]
//! struct GetTimestamp;
//!
//! assert_eq!(<GetTimestamp as clusterfy::Command>::NAME, "get_timestamp");
//! ```
//!
//! Keys of `#[command(...)]`:
//!
//! - `name = "..."` (required): the stable wire name. The naming rule of `clusterfy::Command`
//!   is checked while the program compiles: a malformed name or one starting with the
//!   reserved `cy_` does not build.
//! - `target = worker` or `target = primary` (required): which side runs it.
//! - `reply = Type` (required): what the handler answers; `()` for nothing.
//! - `crate = path` (optional): where the `clusterfy` crate is, for a program that renames it.
//!
//! The command type itself still derives serde's `Serialize` and `Deserialize`.

use proc_macro::TokenStream;
use proc_macro2::Span;
use quote::quote;
use syn::{DeriveInput, Ident, LitStr, Path, Type, parse_macro_input};

/// Implements `clusterfy::Command`; see the crate docs for the `#[command(...)]` keys.
#[proc_macro_derive(Command, attributes(command))]
pub fn derive_command(input: TokenStream) -> TokenStream {
    let input = parse_macro_input!(input as DeriveInput);
    match expand(&input) {
        Ok(tokens) => tokens.into(),
        Err(err) => err.to_compile_error().into(),
    }
}

/// The keys of one `#[command(...)]`, as written.
#[derive(Default)]
struct Keys {
    name: Option<LitStr>,
    target: Option<Ident>,
    reply: Option<Type>,
    krate: Option<Path>,
}

fn expand(input: &DeriveInput) -> syn::Result<proc_macro2::TokenStream> {
    let keys = parse_keys(input)?;
    let missing = |what: &str| {
        syn::Error::new(
            Span::call_site(),
            format!(
                "#[derive(Command)] needs {what} in #[command(name = \"...\", target = worker, reply = Type)]"
            ),
        )
    };
    let name = keys.name.ok_or_else(|| missing("`name = \"...\"`, the command's stable wire name,"))?;
    let target = keys.target.ok_or_else(|| missing("`target = worker` or `target = primary`"))?;
    let reply =
        keys.reply.ok_or_else(|| missing("`reply = Type`, what the handler answers (`()` for nothing),"))?;
    let krate = keys.krate.unwrap_or_else(|| syn::parse_quote!(::clusterfy));
    let target = match target.to_string().as_str() {
        "worker" => quote!(#krate::Target::Worker),
        "primary" => quote!(#krate::Target::Primary),
        _ => return Err(syn::Error::new(target.span(), "`target` is `worker` or `primary`")),
    };
    let ident = &input.ident;
    let (impl_generics, type_generics, where_clause) = input.generics.split_for_impl();
    // The name is checked by the same `const fn` that checks names at run time, in a free
    // constant (evaluated even by `cargo check`, unlike an associated one), so a bad name fails
    // the build with that rule's message.
    Ok(quote! {
        const _: () = if let ::core::option::Option::Some(problem) =
            #krate::__private::command_name_problem(#name, false)
        {
            ::core::panic!("{}", problem);
        };
        impl #impl_generics #krate::Command for #ident #type_generics #where_clause {
            const NAME: &'static str = #name;
            const TARGET: #krate::Target = #target;
            type Reply = #reply;
        }
    })
}

fn parse_keys(input: &DeriveInput) -> syn::Result<Keys> {
    let mut keys = Keys::default();
    let mut seen = false;
    for attr in input.attrs.iter().filter(|attr| attr.path().is_ident("command")) {
        seen = true;
        attr.parse_nested_meta(|meta| {
            if meta.path.is_ident("name") {
                set_once(&mut keys.name, &meta)
            } else if meta.path.is_ident("target") {
                set_once(&mut keys.target, &meta)
            } else if meta.path.is_ident("reply") {
                set_once(&mut keys.reply, &meta)
            } else if meta.path.is_ident("crate") {
                set_once(&mut keys.krate, &meta)
            } else {
                Err(meta.error("unknown key: #[command(...)] takes `name`, `target`, `reply` and `crate`"))
            }
        })?;
    }
    if !seen {
        return Err(syn::Error::new(
            Span::call_site(),
            "#[derive(Command)] needs #[command(name = \"...\", target = worker, reply = Type)]",
        ));
    }
    Ok(keys)
}

/// Reads the value of one `key = value`, refusing a key given twice.
fn set_once<T: syn::parse::Parse>(
    slot: &mut Option<T>,
    meta: &syn::meta::ParseNestedMeta<'_>,
) -> syn::Result<()> {
    if slot.is_some() {
        return Err(meta.error("this key is given twice"));
    }
    *slot = Some(meta.value()?.parse()?);
    Ok(())
}
