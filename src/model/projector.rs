//! The projector from CLIP features to LM embeddings.
//!
//! `Residual` (ours, DESIGN.md section 2): `Linear(d_vision -> d_lm)` then `depth` blocks
//! `x + W2(gelu(W1(LN(x))))`; depth 0 is LLaVA-1's plain linear projection.
//! `Mlp2xGelu` (LLaVA-1.5): `Linear(d_vision -> d_lm), GELU, Linear(d_lm -> d_lm)`.

use burn::nn::{LayerNorm, LayerNormConfig, Linear, LinearConfig};
use burn::prelude::*;
use burn::tensor::activation::gelu;

use super::lora::QLoraBackend;
use super::FlatForward;

#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum ProjectorKind {
    Residual,
    Mlp2xGelu,
}

#[derive(Config, Debug)]
pub struct ProjectorConfig {
    pub d_vision: usize,
    pub d_lm: usize,
    /// Residual blocks after the input projection (`Residual` only).
    #[config(default = 0)]
    pub depth: usize,
    #[config(default = "ProjectorKind::Residual")]
    pub kind: ProjectorKind,
    /// Hidden width of each residual block; `None` = `d_lm`.
    pub block_hidden: Option<usize>,
    #[config(default = 1e-5)]
    pub layer_norm_eps: f64,
}

#[derive(Module, Debug)]
pub struct ResidualBlock<B: Backend> {
    pub norm: LayerNorm<B>,
    pub w1: Linear<B>,
    pub w2: Linear<B>,
}

impl<B: QLoraBackend> ResidualBlock<B> {
    pub fn forward(&self, x: Tensor<B, 3>) -> Tensor<B, 3> {
        let h = self
            .w2
            .forward_flat(gelu(self.w1.forward_flat(self.norm.forward(x.clone()))));
        x + h
    }
}

#[derive(Module, Debug)]
pub struct Projector<B: Backend> {
    pub input: Linear<B>,
    pub blocks: Vec<ResidualBlock<B>>,
    /// The second linear of `mlp2x_gelu`.
    pub output: Option<Linear<B>>,
}

impl ProjectorConfig {
    /// Default burn initialisation, except each block's `w2` starts at zero: every residual
    /// block begins as the identity, so a deeper projector starts as the same function as
    /// depth 0 and comparisons across depths start from equal footing.
    pub fn init<B: Backend>(&self, device: &B::Device) -> Projector<B> {
        let (dv, d) = (self.d_vision, self.d_lm);
        let hidden = self.block_hidden.unwrap_or(d);
        match self.kind {
            ProjectorKind::Residual => Projector {
                input: LinearConfig::new(dv, d).init(device),
                blocks: (0..self.depth)
                    .map(|_| ResidualBlock {
                        norm: LayerNormConfig::new(d)
                            .with_epsilon(self.layer_norm_eps)
                            .init(device),
                        w1: LinearConfig::new(d, hidden).init(device),
                        w2: LinearConfig::new(hidden, d)
                            .with_initializer(burn::nn::Initializer::Zeros)
                            .init(device),
                    })
                    .collect(),
                output: None,
            },
            ProjectorKind::Mlp2xGelu => Projector {
                input: LinearConfig::new(dv, d).init(device),
                blocks: vec![],
                output: Some(LinearConfig::new(d, d).init(device)),
            },
        }
    }
}

impl<B: QLoraBackend> Projector<B> {
    /// `[batch, patches, d_vision]` -> `[batch, patches, d_lm]`.
    pub fn forward(&self, x: Tensor<B, 3>) -> Tensor<B, 3> {
        let mut x = self.input.forward_flat(x);
        if let Some(out) = &self.output {
            return out.forward_flat(gelu(x));
        }
        for b in &self.blocks {
            x = b.forward(x);
        }
        x
    }
}

impl<B: QLoraBackend> Projector<B> {
    /// Loads projector weights saved in PyTorch layout under `prefix`: `input`,
    /// `blocks.{i}.{norm,w1,w2}`, `output` (the names the harness exports and its reference
    /// scripts use).
    pub fn load(
        ckpt: &super::checkpoint::Checkpoint,
        prefix: &str,
        cfg: &ProjectorConfig,
        device: &B::Device,
    ) -> anyhow::Result<Self> {
        let (dv, d) = (cfg.d_vision, cfg.d_lm);
        let hidden = cfg.block_hidden.unwrap_or(d);
        // An empty prefix reads the names as `harness export` writes them (`input.weight`).
        let at = |name: &str| {
            if prefix.is_empty() {
                name.to_string()
            } else {
                format!("{prefix}.{name}")
            }
        };
        let mut p = cfg.init::<B>(device);
        p.input = ckpt.linear(&at("input"), dv, d, true, device)?;
        for (i, b) in p.blocks.iter_mut().enumerate() {
            let k = at(&format!("blocks.{i}"));
            b.norm = ckpt.layer_norm(&format!("{k}.norm"), d, cfg.layer_norm_eps, device)?;
            b.w1 = ckpt.linear(&format!("{k}.w1"), d, hidden, true, device)?;
            b.w2 = ckpt.linear(&format!("{k}.w2"), hidden, d, true, device)?;
        }
        if p.output.is_some() {
            p.output = Some(ckpt.linear(&at("output"), d, d, true, device)?);
        }
        Ok(p)
    }

    /// The weights in PyTorch layout (Linear `[out, in]`, LayerNorm `weight`/`bias`) under
    /// the names [`Projector::load`] reads with an empty prefix: `input.{weight,bias}`,
    /// `blocks.{i}.{norm,w1,w2}.{weight,bias}`, `output.{weight,bias}`. Row-major f32.
    pub fn to_torch(&self) -> Vec<(String, Vec<usize>, Vec<f32>)> {
        fn vals<B: Backend, const D: usize>(t: Tensor<B, D>) -> (Vec<usize>, Vec<f32>) {
            let d = t.into_data().convert::<f32>();
            (d.shape.to_vec(), d.to_vec::<f32>().expect("f32 weights"))
        }
        let mut out = vec![];
        let mut linear = |name: String, l: &Linear<B>| {
            let (s, v) = vals(l.weight.val().transpose());
            out.push((format!("{name}.weight"), s, v));
            if let Some(b) = &l.bias {
                let (s, v) = vals(b.val());
                out.push((format!("{name}.bias"), s, v));
            }
        };
        linear("input".into(), &self.input);
        for (i, b) in self.blocks.iter().enumerate() {
            linear(format!("blocks.{i}.w1"), &b.w1);
            linear(format!("blocks.{i}.w2"), &b.w2);
        }
        if let Some(o) = &self.output {
            linear("output".into(), o);
        }
        for (i, b) in self.blocks.iter().enumerate() {
            let (s, v) = vals(b.norm.gamma.val());
            out.push((format!("blocks.{i}.norm.weight"), s, v));
            if let Some(beta) = &b.norm.beta {
                let (s, v) = vals(beta.val());
                out.push((format!("blocks.{i}.norm.bias"), s, v));
            }
        }
        out.sort_by(|a, b| a.0.cmp(&b.0));
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::Compute;

    #[test]
    fn residual_blocks_start_as_identity() {
        let dev = Default::default();
        let p0 = ProjectorConfig::new(8, 16).init::<Compute>(&dev);
        let mut p3 = ProjectorConfig::new(8, 16)
            .with_depth(3)
            .init::<Compute>(&dev);
        let x = Tensor::<Compute, 3>::random([2, 5, 8], burn::tensor::Distribution::Default, &dev);
        // Params initialise lazily; use p0 first so the clone copies its values.
        let a = p0.forward(x.clone());
        p3.input = p0.input.clone();
        let b = p3.forward(x);
        assert_eq!(b.dims(), [2, 5, 16]);
        let diff: f32 = (a - b).abs().max().into_scalar();
        assert!(diff < 1e-6, "{diff}");
    }

    #[test]
    fn mlp2x_gelu_shapes() {
        let dev = Default::default();
        let p = ProjectorConfig::new(8, 16)
            .with_kind(ProjectorKind::Mlp2xGelu)
            .init::<Compute>(&dev);
        let x = Tensor::<Compute, 3>::zeros([1, 4, 8], &dev);
        assert_eq!(p.forward(x).dims(), [1, 4, 16]);
    }
}
