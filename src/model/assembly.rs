//! The VLM of an experiment, assembled in one place: its backbones resolved, the vision
//! setup, projector and LM it describes, and a run's trained weights loaded. Training,
//! in-run evaluation, inference sessions and export all build their model through here, so
//! a model is read back exactly as it was trained.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use burn::module::Module;
use burn::record::{FullPrecisionSettings, NamedMpkFileRecorder, Recorder};
use burn::tensor::backend::Backend;

use super::checkpoint::Checkpoint;
use super::clip::FeatureSelect;
use super::lora::{LoraConfig, QLoraBackend};
use super::phi::{Phi, PhiConfig};
use super::preprocess::PreprocessConfig;
use super::projector::{Projector, ProjectorConfig, ProjectorKind};
use crate::config::{
    Experiment, FeatureSelect as SelectCfg, ImageAspect, ProjectorKind as KindCfg,
};

/// How trained weights (projector, adapters, optimizer state) are written and read:
/// burn's named MessagePack records at full precision.
pub type WeightsRecorder = NamedMpkFileRecorder<FullPrecisionSettings>;

/// The checkpoint folders of an experiment's two backbones.
#[derive(Debug, Clone)]
pub struct BackboneDirs {
    pub vision: PathBuf,
    pub lm: PathBuf,
}

/// Resolves the experiment's vision and LM specs to folders (a `builtin:` one must be
/// built already: [`crate::backbones::resolve`]), as this binary's code builds them.
pub fn backbone_dirs(exp: &Experiment) -> Result<BackboneDirs> {
    backbone_dirs_for_code(exp, Some(crate::config::fingerprint::FINGERPRINT))
}

/// [`backbone_dirs`] as the code with fingerprint `code` built them (`None`: a binary from
/// before fingerprints): trained weights are loaded onto the backbones they were trained on.
pub fn backbone_dirs_for_code(exp: &Experiment, code: Option<&str>) -> Result<BackboneDirs> {
    let world = Path::new(&exp.data.coco_root);
    Ok(BackboneDirs {
        vision: crate::backbones::resolve_for_code(&exp.model.vision, world, code)?,
        lm: crate::backbones::resolve_for_code(&exp.model.lm, world, code)?,
    })
}

/// The feature selection and preprocessing an experiment asks of its vision tower.
pub fn vision_setup(
    exp: &Experiment,
    vision_dir: &Path,
) -> Result<(FeatureSelect, PreprocessConfig)> {
    let select = FeatureSelect {
        layer: exp.model.feature_layer,
        with_cls: exp.model.feature_select == SelectCfg::ClsPatch,
    };
    let mut pre = PreprocessConfig::load(vision_dir)?;
    pre.pad_to_square = exp.model.image_aspect == ImageAspect::Pad;
    Ok((select, pre))
}

/// The projector an experiment describes, for features of width `d_vision`.
pub fn projector_config(exp: &Experiment, d_vision: usize, d_lm: usize) -> ProjectorConfig {
    let kind = match exp.model.projector {
        KindCfg::Residual => ProjectorKind::Residual,
        KindCfg::Mlp2xGelu => ProjectorKind::Mlp2xGelu,
    };
    ProjectorConfig::new(d_vision, d_lm)
        .with_depth(exp.model.projector_depth as usize)
        .with_kind(kind)
}

/// The adapters the LM carries in `stage`: none in stage 1 (the LM is frozen whole), the
/// experiment's LoRA (and NF4 base) in stage 2.
pub fn lora_config(exp: &Experiment, stage: u8) -> LoraConfig {
    if stage == 2 {
        LoraConfig::from_stage2(&exp.stage2)
    } else {
        LoraConfig::frozen()
    }
}

/// The LM's checkpoint, read into the experiment's compute dtype (`auto`: bf16 on a GPU).
pub fn lm_checkpoint(exp: &Experiment, lm_dir: &Path) -> Result<Checkpoint> {
    let ckpt = Checkpoint::open(lm_dir)?;
    Ok(match crate::backend::lm_dtype(exp.model.dtype) {
        Some(d) => ckpt.with_dtype(d),
        None => ckpt,
    })
}

/// The experiment's LM from `lm_dir` with the adapters `lora` describes (fresh: A random,
/// B zero), in the experiment's compute dtype. The checkpoint is dropped once loaded.
pub fn load_lm<B: QLoraBackend>(
    exp: &Experiment,
    lm_dir: &Path,
    lora: &LoraConfig,
    device: &B::Device,
) -> Result<(Phi<B>, PhiConfig)> {
    let cfg = PhiConfig::load(lm_dir)?;
    let ckpt = lm_checkpoint(exp, lm_dir)?;
    let lm = Phi::<B>::load_with(&ckpt, &cfg, device, lora)
        .with_context(|| format!("loading the language model from {}", lm_dir.display()))?;
    Ok((lm, cfg))
}

/// Reads the record `name` (`name.mpk` in `dir`) into `module`; `what` names it in errors.
pub fn load_record<B: Backend, M: Module<B>>(
    module: M,
    dir: &Path,
    name: &str,
    what: &str,
    device: &B::Device,
) -> Result<M> {
    let rec = WeightsRecorder::new()
        .load(dir.join(name), device)
        .with_context(|| {
            format!(
                "loading {what} from {}",
                dir.join(format!("{name}.mpk")).display()
            )
        })?;
    Ok(module.load_record(rec))
}

/// Loads adapters from a `final/` (or step) folder into `lm`.
pub fn load_adapters<B: Backend>(lm: Phi<B>, dir: &Path, device: &B::Device) -> Result<Phi<B>> {
    let a = load_record(lm.adapters(), dir, "adapters", "the LoRA adapters", device)?;
    Ok(lm.with_adapters(a))
}

/// Loads projector weights from a `final/` (or step) folder into `projector`.
pub fn load_projector<B: Backend>(
    projector: Projector<B>,
    dir: &Path,
    device: &B::Device,
) -> Result<Projector<B>> {
    load_record(projector, dir, "projector", "the projector", device)
}
