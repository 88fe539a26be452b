//! Backbones the harness trains itself, so the CPU demo on the synthetic world does not run
//! on frozen random networks (issue 8). Each is saved in the Hugging Face layout and loaded
//! by the stages through the same loaders as real checkpoints.
//!
//! - [`clip`]: `harness pretrain clip`, a tiny CLIP trained contrastively on image-caption
//!   pairs; the vision tower is saved as a `CLIPVisionModel` folder.
//! - [`lm`]: `harness pretrain lm`, a tiny Phi trained on the world's text with the
//!   image's captions where the image goes; saved as a `PhiForCausalLM` folder.

pub mod builtin;
pub mod clip;
pub mod lm;
