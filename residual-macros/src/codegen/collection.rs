//! `TensorCollection` (named fields: the parameter paths become safetensors keys) and
//! `BuildOnDevice`. dfdx implements `ModuleFields` for tuples of up to 6 fields; larger models
//! nest tuples of tuples.

use proc_macro2::TokenStream;
use quote::{quote, quote_spanned};

use super::{dfdx, ident, private};
use crate::ir::Program;
use crate::model::Model;

/// A tuple tree with at most `MAX` children per node.
enum Tree {
    Leaf(usize),
    Node(Vec<Tree>),
}

const MAX: usize = 6;

fn tree(n: usize) -> Tree {
    let mut level: Vec<Tree> = (0..n).map(Tree::Leaf).collect();
    while level.len() > MAX {
        let mut next = Vec::new();
        let mut chunk = Vec::new();
        for t in level {
            chunk.push(t);
            if chunk.len() == MAX {
                next.push(Tree::Node(std::mem::take(&mut chunk)));
            }
        }
        if !chunk.is_empty() {
            next.push(Tree::Node(chunk));
        }
        level = next;
    }
    Tree::Node(level)
}

fn emit(t: &Tree, leaf: &dyn Fn(usize) -> TokenStream) -> TokenStream {
    match t {
        Tree::Leaf(i) => leaf(*i),
        Tree::Node(children) => {
            let parts = children.iter().map(|c| emit(c, leaf));
            quote!((#(#parts,)*))
        }
    }
}

pub(crate) fn collection_impl(m: &Model, prog: &Program) -> TokenStream {
    let d = dfdx();
    let p = private();
    let name = &m.name;
    let t = tree(prog.fields.len());
    let fields = emit(&t, &|i| match prog.fields.get(i) {
        Some(f) => {
            let id = ident(&f.ident);
            let key = &f.path;
            quote!(Self::module(#key, |s| &s.#id, |s| &mut s.#id))
        }
        None => quote!(()),
    });
    let pattern = emit(&t, &|i| match prog.fields.get(i) {
        Some(f) => {
            let id = ident(&f.ident);
            quote!(#id)
        }
        None => quote!(_),
    });
    let idents = prog.fields.iter().map(|f| ident(&f.ident));
    let build = build_impl(name);
    let visit = if prog.fields.is_empty() {
        quote!(visitor.visit_fields((), |_| #name { _marker: ::core::marker::PhantomData }))
    } else {
        quote!(visitor.visit_fields(#fields, |#pattern| #name { #(#idents,)* }))
    };
    quote! {
        impl<E: #p::runtime::Element, D: #p::runtime::Backend<E>> #d::nn::TensorCollection<E, D> for #name<E, D> {
            type To<E2: #d::shapes::Dtype, D2: #d::tensor_ops::Device<E2>> = #name<E2, D2>;
            fn iter_tensors<V: #d::nn::ModuleVisitor<Self, E, D>>(
                visitor: &mut V,
            ) -> ::core::result::Result<::core::option::Option<Self::To<V::E2, V::D2>>, V::Err> {
                #visit
            }
        }
        #build
    }
}

/// `BuildOnDevice` for any dtype and device the model is asked to build on, on the condition
/// `BuildsAs` (implemented for the model's own dtype and device only), so that a mismatch is
/// reported with `BuildsAs`'s message instead of dfdx's list of `BuildOnDevice` implementors.
pub(crate) fn build_impl(name: &syn::Ident) -> TokenStream {
    let d = dfdx();
    let p = private();
    // At the model's name, so that rustc's note on a dtype mismatch points there.
    quote_spanned! {name.span()=>
        impl<E: #d::shapes::Dtype, D: #d::tensor_ops::Device<E>> #p::runtime::model::BuildsAs<E, D> for #name<E, D> {}
        impl<E: #d::shapes::Dtype, D: #d::tensor_ops::Device<E>, E2: #p::runtime::Element, D2: #p::runtime::Backend<E2>>
            #d::nn::BuildOnDevice<D2, E2> for #name<E, D>
        where
            Self: #p::runtime::model::BuildsAs<E2, D2>,
        {
            type Built = #name<E2, D2>;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn shape(t: &Tree) -> String {
        match t {
            Tree::Leaf(i) => i.to_string(),
            Tree::Node(c) => format!("({})", c.iter().map(shape).collect::<Vec<_>>().join(",")),
        }
    }

    #[test]
    fn tuples_nest_at_six() {
        assert_eq!(shape(&tree(0)), "()");
        assert_eq!(shape(&tree(1)), "(0)");
        assert_eq!(shape(&tree(6)), "(0,1,2,3,4,5)");
        assert_eq!(shape(&tree(7)), "((0,1,2,3,4,5),(6))");
        // Every node has at most 6 children, at every depth.
        fn max_width(t: &Tree) -> usize {
            match t {
                Tree::Leaf(_) => 0,
                Tree::Node(c) => c.iter().map(max_width).max().unwrap_or(0).max(c.len()),
            }
        }
        for n in [37, 100, 466, 1000] {
            assert!(max_width(&tree(n)) <= 6, "n = {n}");
            fn leaves(t: &Tree) -> Vec<usize> {
                match t {
                    Tree::Leaf(i) => vec![*i],
                    Tree::Node(c) => c.iter().flat_map(leaves).collect(),
                }
            }
            assert_eq!(leaves(&tree(n)), (0..n).collect::<Vec<_>>(), "n = {n}");
        }
    }
}
