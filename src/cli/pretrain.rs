//! `harness pretrain clip`: trains the tiny CLIP of the CPU demo (see
//! [`crate::pretrain::clip`]) and writes its vision tower as an HF folder.

use std::path::PathBuf;

use clap::{Args, Subcommand};

use crate::pretrain::clip::{pretrain_clip, ClipPretrainOptions};

#[derive(Subcommand, Debug)]
pub enum PretrainCommand {
    /// A tiny CLIP trained contrastively on a synthetic world's image-caption pairs; writes
    /// config.json, model.safetensors, preprocessor_config.json and pretrain.json.
    Clip(ClipArgs),
}

#[derive(Args, Debug)]
pub struct ClipArgs {
    /// A synthetic world in COCO layout (`harness synth --out DIR`).
    #[arg(long)]
    pub data: PathBuf,
    /// Output folder (HF CLIPVisionModel layout).
    #[arg(long)]
    pub out: PathBuf,
    /// Patch size in pixels (8 or 16 for the demo).
    #[arg(long, default_value_t = 8)]
    pub patch: usize,
    /// Input side in pixels (a multiple of the patch).
    #[arg(long, default_value_t = 32)]
    pub image_size: usize,
    /// Optimizer steps.
    #[arg(long, default_value_t = ClipPretrainOptions::default().steps)]
    pub steps: u64,
    /// Image-caption pairs per step.
    #[arg(long, default_value_t = ClipPretrainOptions::default().batch)]
    pub batch: usize,
    /// Peak learning rate.
    #[arg(long, default_value_t = ClipPretrainOptions::default().lr)]
    pub lr: f64,
    /// Width of both towers.
    #[arg(long, default_value_t = ClipPretrainOptions::default().hidden)]
    pub hidden: usize,
    /// Vision layers.
    #[arg(long, default_value_t = ClipPretrainOptions::default().vision_layers)]
    pub layers: usize,
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
}

pub fn pretrain(c: PretrainCommand) -> anyhow::Result<()> {
    match c {
        PretrainCommand::Clip(a) => {
            let o = ClipPretrainOptions {
                data: a.data,
                out: a.out,
                patch: a.patch,
                image_size: a.image_size,
                steps: a.steps,
                batch: a.batch,
                lr: a.lr,
                hidden: a.hidden,
                vision_layers: a.layers,
                seed: a.seed,
                ..Default::default()
            };
            let r = pretrain_clip(&o)?;
            println!(
                "pretrained CLIP ({} train / {} val images, {} steps) in {:.1}s (training {:.1}s): loss {:.3} -> {:.3}",
                r.train_images,
                r.val_images,
                o.steps,
                r.total_seconds,
                r.train_seconds,
                r.first_loss,
                r.final_loss
            );
            match &r.zero_shot {
                Some(z) => println!(
                    "zero-shot on val: colour {:.3} (chance 0.167), shape {:.3} (chance 0.25) on {} one-shape images; any-shape: colour {:.3} (chance {:.3}), shape {:.3} (chance {:.3}) on {} images",
                    z.color_acc, z.shape_acc, z.single_shape_images, z.color_acc_any,
                    z.color_chance_any, z.shape_acc_any, z.shape_chance_any, z.images
                ),
                None => println!("zero-shot: skipped (no val split or no synth.json)"),
            }
            println!("wrote {}", o.out.display());
            Ok(())
        }
    }
}
