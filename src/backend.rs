//! The compute backend chosen at build time: burn's pure-Rust `Flex` CPU backend by default,
//! CUDA with the `cuda` feature (kernels fused and autotuned; libraries loaded at run time).

#[cfg(not(feature = "cuda"))]
pub type Compute = burn::backend::Flex;
#[cfg(feature = "cuda")]
pub type Compute = burn::backend::Cuda;

/// The backend with automatic differentiation, for training.
pub type Train = burn::backend::Autodiff<Compute>;

/// Human-readable name of the compiled backend, recorded in provenance.
pub const NAME: &str = if cfg!(feature = "cuda") {
    "cuda"
} else {
    "cpu-flex"
};

/// The device for a GPU ordinal (ignored on the CPU).
#[cfg(not(feature = "cuda"))]
pub fn device(_ordinal: usize) -> burn::tensor::Device<Compute> {
    Default::default()
}

/// The device for a GPU ordinal.
#[cfg(feature = "cuda")]
pub fn device(ordinal: usize) -> burn::tensor::Device<Compute> {
    burn::backend::cuda::CudaDevice::new(ordinal)
}
