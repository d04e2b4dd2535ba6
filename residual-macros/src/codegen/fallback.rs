//! What is emitted for a model when the expansion has errors (after thiserror's `fallback.rs`):
//! a type of the model's name implementing everything user code calls on a model, building,
//! `Module` / `ModuleMut`, `TensorCollection`, `ModelInfo`, so that the macro's errors are the
//! only ones. The input and output types are the declared ones where the macro got that far;
//! an unknown output is `Never` (`!`, which coerces to whatever the user's code expects), an
//! unknown input makes `Module` generic over its input.

use proc_macro2::TokenStream;
use quote::quote;

use super::{dfdx, lit, private, tensor_ty};

/// What is known of a model that failed: its name and visibility, and its input and output
/// shapes (without batch) when the declaration got that far.
pub(crate) struct Known<'a> {
    pub vis: &'a syn::Visibility,
    pub name: &'a syn::Ident,
    pub docs: &'a [syn::Attribute],
    pub input: Option<&'a [usize]>,
    pub output: Option<&'a [usize]>,
    /// The model reads token ids (its `embedding` was inferred before the error): its input
    /// is `usize`, as in the model without errors.
    pub ids: bool,
}

pub(crate) fn fallback(k: &Known) -> TokenStream {
    let d = dfdx();
    let p = private();
    let Known { vis, name, docs, .. } = k;
    if crate::model::GENERIC_PARAMS.contains(&name.to_string().as_str()) {
        // A model named like a generic parameter of the impls (already an error): a bare type,
        // since impls over `E, D` for a type named `D` would not compile.
        return quote! {
            #[allow(dead_code)]
            #vis struct #name<E = f32, D = #d::tensor::Cpu> {
                _marker: ::core::marker::PhantomData<(E, D)>,
            }
        };
    }
    let name_str = name.to_string();
    let never = quote!(#p::runtime::model::Never);
    let body = quote!(::core::unreachable!("this model's declaration has errors"));
    let module = match k.input {
        Some(input) => {
            let in_ty = if k.ids { super::ids_ty(input) } else { tensor_ty(input) };
            let out_ty = match k.output {
                Some(o) => tensor_ty(o),
                None => never.clone(),
            };
            let generics = quote!(<B: #d::shapes::Dim, E: #p::runtime::Element, D: #p::runtime::Backend<E>, T: #d::tensor::Tape<E, D> + 'static>);
            quote! {
                impl #generics #d::nn::Module<#in_ty> for #name<E, D> {
                    type Output = #out_ty;
                    type Error = D::Err;
                    fn try_forward(&self, _: #in_ty) -> ::core::result::Result<Self::Output, D::Err> { #body }
                }
                impl #generics #d::nn::ModuleMut<#in_ty> for #name<E, D> {
                    type Output = #out_ty;
                    type Error = D::Err;
                    fn try_forward_mut(&mut self, _: #in_ty) -> ::core::result::Result<Self::Output, D::Err> { #body }
                }
            }
        }
        None => {
            let generics = quote!(<X, E: #p::runtime::Element, D: #p::runtime::Backend<E>>);
            quote! {
                impl #generics #d::nn::Module<X> for #name<E, D> {
                    type Output = #never;
                    type Error = D::Err;
                    fn try_forward(&self, _: X) -> ::core::result::Result<Self::Output, D::Err> { #body }
                }
                impl #generics #d::nn::ModuleMut<X> for #name<E, D> {
                    type Output = #never;
                    type Error = D::Err;
                    fn try_forward_mut(&mut self, _: X) -> ::core::result::Result<Self::Output, D::Err> { #body }
                }
            }
        }
    };
    let dims = |s: Option<&[usize]>| {
        let ns = s.unwrap_or(&[]).iter().map(|n| lit(*n));
        quote!(&[#(#ns),*])
    };
    let (input, output) = (dims(k.input), dims(k.output));
    let build = super::collection::build_impl(name);
    quote! {
        #(#docs)*
        #[derive(Clone, Debug)]
        #vis struct #name<E: #d::shapes::Dtype = f32, D: #d::tensor_ops::Device<E> = #d::tensor::Cpu> {
            #[doc(hidden)]
            pub _marker: ::core::marker::PhantomData<(E, D)>,
        }
        #module
        impl<E: #p::runtime::Element, D: #p::runtime::Backend<E>> #d::nn::TensorCollection<E, D> for #name<E, D> {
            type To<E2: #d::shapes::Dtype, D2: #d::tensor_ops::Device<E2>> = #name<E2, D2>;
            fn iter_tensors<V: #d::nn::ModuleVisitor<Self, E, D>>(
                visitor: &mut V,
            ) -> ::core::result::Result<::core::option::Option<Self::To<V::E2, V::D2>>, V::Err> {
                visitor.visit_fields((), |_| #name { _marker: ::core::marker::PhantomData })
            }
        }
        #build
        impl<E: #d::shapes::Dtype, D: #d::tensor_ops::Device<E>> #p::runtime::summary::ModelInfo for #name<E, D> {
            const NAME: &'static str = #name_str;
            const INPUT_SHAPE: &'static [usize] = #input;
            const OUTPUT_SHAPE: &'static [usize] = #output;
            const NUM_PARAMS: usize = 0;
            const MACS: u64 = 0;
            const SUMMARY: #p::runtime::summary::ModelSummary = #p::runtime::summary::ModelSummary {
                name: #name_str,
                input_shape: #input,
                output_shape: #output,
                layers: &[],
                params: 0,
                macs: 0,
            };
        }
    }
}
