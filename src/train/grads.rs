//! Gradient bookkeeping burn's optimizers leave to the caller: the global L2 norm over all
//! of a module's gradients, scaling (for clipping and accumulation), and accumulation.
//! burn's own `GradientClipping::Norm` clips each tensor separately; PyTorch's
//! `clip_grad_norm_`, which the references use, clips by the norm of all of them together.

use burn::module::{AutodiffModule, ModuleVisitor, Param};
use burn::optim::GradientsParams;
use burn::prelude::*;
use burn::tensor::backend::AutodiffBackend;

struct SquaredSum<'a, B: AutodiffBackend> {
    grads: &'a GradientsParams,
    total: f64,
    _b: std::marker::PhantomData<B>,
}

impl<B: AutodiffBackend> ModuleVisitor<B> for SquaredSum<'_, B> {
    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<B, D>>) {
        if let Some(g) = self.grads.get::<B::InnerBackend, D>(param.id) {
            self.total += g.square().sum().into_scalar().elem::<f64>();
        }
    }
}

/// The L2 norm of all of `module`'s gradients in `grads`.
pub fn global_norm<B: AutodiffBackend, M: AutodiffModule<B>>(
    module: &M,
    grads: &GradientsParams,
) -> f64 {
    let mut v = SquaredSum::<B> {
        grads,
        total: 0.0,
        _b: Default::default(),
    };
    module.visit(&mut v);
    v.total.sqrt()
}

struct Scale<'a, B: AutodiffBackend> {
    grads: &'a mut GradientsParams,
    factor: f64,
    _b: std::marker::PhantomData<B>,
}

impl<B: AutodiffBackend> ModuleVisitor<B> for Scale<'_, B> {
    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<B, D>>) {
        if let Some(g) = self.grads.remove::<B::InnerBackend, D>(param.id) {
            self.grads.register(param.id, g.mul_scalar(self.factor));
        }
    }
}

/// Multiplies every gradient of `module` in `grads` by `factor`.
pub fn scale<B: AutodiffBackend, M: AutodiffModule<B>>(
    module: &M,
    grads: &mut GradientsParams,
    factor: f64,
) {
    if factor != 1.0 {
        module.visit(&mut Scale::<B> {
            grads,
            factor,
            _b: Default::default(),
        });
    }
}

/// Clips like `torch.nn.utils.clip_grad_norm_(max_norm)`: when the global norm exceeds
/// `max_norm`, every gradient is scaled by `max_norm / (norm + 1e-6)`. Returns the norm
/// before clipping. `max_norm <= 0` only measures.
pub fn clip_global_norm<B: AutodiffBackend, M: AutodiffModule<B>>(
    module: &M,
    grads: &mut GradientsParams,
    max_norm: f64,
) -> f64 {
    let norm = global_norm::<B, M>(module, grads);
    if max_norm > 0.0 && norm > max_norm {
        scale::<B, M>(module, grads, max_norm / (norm + 1e-6));
    }
    norm
}

struct Accumulate<'a, B: AutodiffBackend> {
    into: &'a mut GradientsParams,
    from: &'a mut GradientsParams,
    _b: std::marker::PhantomData<B>,
}

impl<B: AutodiffBackend> ModuleVisitor<B> for Accumulate<'_, B> {
    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<B, D>>) {
        if let Some(g) = self.from.remove::<B::InnerBackend, D>(param.id) {
            let sum = match self.into.remove::<B::InnerBackend, D>(param.id) {
                Some(acc) => acc + g,
                None => g,
            };
            self.into.register(param.id, sum);
        }
    }
}

/// Adds `from` into `into` for `module`'s parameters (gradient accumulation).
pub fn accumulate<B: AutodiffBackend, M: AutodiffModule<B>>(
    module: &M,
    into: &mut GradientsParams,
    mut from: GradientsParams,
) {
    module.visit(&mut Accumulate::<B> {
        into,
        from: &mut from,
        _b: Default::default(),
    });
}

/// The gradients of `module`'s trainable parameters laid end to end in one flat tensor, in
/// the module's visit order (the same on every replica, whatever the parameter ids). A
/// parameter without a gradient (a worker whose share of the batch was empty) takes zeros,
/// so every replica's buffer has the same layout. [`unflatten`] undoes it.
pub fn flatten<B: AutodiffBackend, M: AutodiffModule<B>>(
    module: &M,
    mut grads: GradientsParams,
) -> Tensor<B::InnerBackend, 1> {
    let mut g = Gather::<B> {
        grads: &mut grads,
        parts: vec![],
    };
    module.visit(&mut g);
    if g.parts.is_empty() {
        return Tensor::zeros([0], &Default::default());
    }
    Tensor::cat(g.parts, 0)
}

/// `values` (as [`flatten`] laid out `module`'s, or a replica's) back as its gradients.
pub fn unflatten<B: AutodiffBackend, M: AutodiffModule<B>>(
    module: &M,
    values: Tensor<B::InnerBackend, 1>,
) -> GradientsParams {
    let mut out = GradientsParams::new();
    let mut s = Scatter::<B> {
        values: &values,
        at: 0,
        into: &mut out,
    };
    module.visit(&mut s);
    debug_assert_eq!(s.at, values.dims()[0], "unflattened into another module");
    out
}

struct Gather<'a, B: AutodiffBackend> {
    grads: &'a mut GradientsParams,
    parts: Vec<Tensor<B::InnerBackend, 1>>,
}

impl<B: AutodiffBackend> ModuleVisitor<B> for Gather<'_, B> {
    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<B, D>>) {
        if !param.is_require_grad() {
            return;
        }
        let n: usize = param.val().dims().iter().product();
        let part = match self.grads.remove::<B::InnerBackend, D>(param.id) {
            Some(g) => g.reshape([n]),
            None => Tensor::zeros([n], &param.device()),
        };
        self.parts.push(part);
    }
}

struct Scatter<'a, B: AutodiffBackend> {
    values: &'a Tensor<B::InnerBackend, 1>,
    at: usize,
    into: &'a mut GradientsParams,
}

impl<B: AutodiffBackend> ModuleVisitor<B> for Scatter<'_, B> {
    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<B, D>>) {
        if !param.is_require_grad() {
            return;
        }
        let dims: [usize; D] = param.val().dims();
        let n = dims.iter().product::<usize>();
        let g = self
            .values
            .clone()
            .slice(self.at..self.at + n)
            .reshape(dims);
        self.into.register(param.id, g);
        self.at += n;
    }
}
