//! `harness pretrain clip|lm`: trains the tiny CLIP / Phi of the CPU demo (see
//! [`crate::pretrain::clip`], [`crate::pretrain::lm`]) and writes each as an HF folder.

use std::path::PathBuf;

use clap::{Args, Subcommand};

use crate::backbones::{ClipPretrainOptions, LmPretrainOptions};
use crate::pretrain::clip::pretrain_clip;
use crate::pretrain::lm::pretrain_lm;

#[derive(Subcommand, Debug)]
pub enum PretrainCommand {
    /// A tiny CLIP trained contrastively on a synthetic world's image-caption pairs; writes
    /// config.json, model.safetensors, preprocessor_config.json and pretrain.json.
    Clip(ClipArgs),
    /// A tiny Phi trained on a synthetic world's captions and conversations, the image's
    /// captions in place of the image; writes config.json, model.safetensors,
    /// tokenizer.json, generation_config.json and pretrain.json.
    Lm(LmArgs),
    /// A `builtin:NAME` backbone of an experiment (clip-p8, clip-p16, phi-tiny, ...), trained
    /// on the world now if it is not cached; prints its folder.
    Builtin(BuiltinArgs),
}

#[derive(Args, Debug)]
pub struct BuiltinArgs {
    /// The recipe's name (the part after `builtin:`).
    pub name: String,
    /// The synthetic world it trains on (the experiment's `data.coco_root`).
    #[arg(long)]
    pub world: PathBuf,
}

#[derive(Args, Debug)]
pub struct LmArgs {
    /// A synthetic world (`harness synth --out DIR`).
    #[arg(long)]
    pub world: PathBuf,
    /// Output folder (HF PhiForCausalLM layout).
    #[arg(long)]
    pub out: PathBuf,
    #[arg(long, default_value_t = LmPretrainOptions::default().d_model)]
    pub d_model: usize,
    #[arg(long, default_value_t = LmPretrainOptions::default().layers)]
    pub layers: usize,
    #[arg(long, default_value_t = LmPretrainOptions::default().heads)]
    pub heads: usize,
    /// Tokenizer vocabulary size.
    #[arg(long, default_value_t = LmPretrainOptions::default().vocab)]
    pub vocab: usize,
    /// Optimizer steps.
    #[arg(long, default_value_t = LmPretrainOptions::default().steps)]
    pub steps: u64,
    /// Documents per step.
    #[arg(long, default_value_t = LmPretrainOptions::default().batch)]
    pub batch: usize,
    /// Peak learning rate.
    #[arg(long, default_value_t = LmPretrainOptions::default().lr)]
    pub lr: f64,
    /// Documents are cut to this many tokens.
    #[arg(long, default_value_t = LmPretrainOptions::default().max_len)]
    pub max_len: usize,
    /// Steps whose documents are drawn together and batched by length (less padding).
    #[arg(long, default_value_t = LmPretrainOptions::default().length_groups)]
    pub length_groups: usize,
    /// Data-parallel worker threads, each on its share of every batch (the result depends
    /// on the count, not on the cores).
    #[arg(long, default_value_t = LmPretrainOptions::default().workers)]
    pub workers: usize,
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
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
        PretrainCommand::Builtin(a) => {
            let dir = crate::pretrain::builtin::ensure(&a.name, &a.world)?;
            println!("builtin:{} is {}", a.name, dir.display());
            Ok(())
        }
        PretrainCommand::Lm(a) => {
            let o = LmPretrainOptions {
                world: a.world,
                out: a.out,
                d_model: a.d_model,
                layers: a.layers,
                heads: a.heads,
                vocab: a.vocab,
                steps: a.steps,
                batch: a.batch,
                lr: a.lr,
                max_len: a.max_len,
                length_groups: a.length_groups,
                workers: a.workers,
                seed: a.seed,
                ..Default::default()
            };
            let r = pretrain_lm(&o)?;
            println!(
                "pretrained Phi (d {}, {} layers, vocab {}; {} train conversations, {} steps) in {:.1}s (training {:.1}s, {:.3}s/step): loss {:.3} -> {:.3}",
                o.d_model,
                o.layers,
                r.config.vocab_size,
                r.train_conversations,
                o.steps,
                r.total_seconds,
                r.train_seconds,
                r.train_seconds / o.steps as f64,
                r.first_loss,
                r.final_loss
            );
            match r.qa.as_ref().and_then(|a| a.overall().map(|x| (a, x))) {
                Some((a, overall)) => {
                    let per: Vec<String> = a
                        .fractions()
                        .iter()
                        .map(|(k, v)| format!("{k} {v:.3}"))
                        .collect();
                    println!(
                        "text-context QA on {} val conversations: {overall:.3} ({})",
                        r.val_conversations,
                        per.join(", ")
                    );
                }
                None => println!("text-context QA: skipped (no val conversations)"),
            }
            println!("wrote {}", o.out.display());
            Ok(())
        }
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
