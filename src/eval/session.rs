//! A finished run loaded for inference: the one place that turns a run in the store into
//! a working model (CLIP tower, projector, Phi with the stage-2 adapters), used by
//! `harness caption`, `harness chat` and `harness export`.
//!
//! Which weights: the stage-2 result (projector and LoRA adapters on the base Phi, NF4 when
//! the run trained on an NF4 base, so the model is the one that was trained) when the run
//! has one, else the stage-1 projector on the frozen Phi. A reused stage's weights are read
//! from the run that trained it (`status.json` names it).

use std::path::{Path, PathBuf};

use anyhow::{bail, ensure, Context, Result};
use burn::prelude::*;

use super::generate::GenerateOptions;
use super::infer::{decode, generate_for_images, PromptLayout};
use crate::backend::Compute;
use crate::config::Experiment;
use crate::data::cache::FeatureExtractor;
use crate::data::clip_features::ClipExtractor;
use crate::data::sequence::{ChatTemplate, TextCodec};
use crate::model::assembly;
use crate::model::lora::LoraConfig;
use crate::model::phi::{Phi, PhiConfig};
use crate::model::preprocess::{load_image, preprocess, PreprocessConfig};
use crate::model::projector::Projector;
use crate::model::tokenizer::Tokenizer;
use crate::store::{State, Store};

type Dev = burn::tensor::Device<Compute>;

/// Images run through CLIP together.
const CLIP_BATCH: usize = 16;

/// A run's model, ready to caption and answer.
pub struct Session {
    pub run_id: String,
    pub exp: Experiment,
    /// 2 when the stage-2 weights are loaded, else 1.
    pub stage: u8,
    /// The `final/` checkpoint folder the weights came from.
    pub weights_dir: PathBuf,
    pub vision_dir: PathBuf,
    pub lm_dir: PathBuf,
    pub lm_config: PhiConfig,
    /// The adapter settings of the loaded LM (`LoraConfig::frozen()` at stage 1).
    pub lora: LoraConfig,
    pub projector: Projector<Compute>,
    pub lm: Phi<Compute>,
    pub tok: Tokenizer,
    pub clip: ClipExtractor<Compute>,
    pub preprocess: PreprocessConfig,
    pub template: ChatTemplate,
    /// Ids closing an assistant turn (the template's `end`).
    pub end: Vec<u32>,
    /// How text is generated; defaults from the run's `[eval]` (greedy unless `beams > 1`).
    pub opts: GenerateOptions,
    pub device: Dev,
}

/// The `final/` folder of `stage` for `run_id`, when that stage completed (in this run or
/// in the run it was reused from).
pub fn stage_final_dir(store: &Store, run_id: &str, stage: u8) -> Result<Option<PathBuf>> {
    let status = store.read_status(run_id)?;
    let name = format!("stage{stage}");
    let Some(st) = status.stages.get(&name) else {
        return Ok(None);
    };
    if !matches!(st.state, State::Completed | State::Reused) {
        return Ok(None);
    }
    let dir = store
        .run_dir(&st.run_id)
        .join("checkpoints")
        .join(&name)
        .join("final");
    ensure!(
        dir.join("projector.mpk").exists(),
        "{name} of run {run_id} is {} but its weights are missing: {}",
        st.state,
        dir.join("projector.mpk").display()
    );
    Ok(Some(dir))
}

/// The code fingerprint of the run that trained `stage`'s weights for `run_id` (itself, or
/// the run the stage was reused from), from its `provenance.json`; `None` when it recorded
/// none. Its `builtin:` backbones are the builds of that code.
pub fn weights_code(store: &Store, run_id: &str, stage: u8) -> Option<String> {
    let status = store.read_status(run_id).ok()?;
    let source = &status.stages.get(&format!("stage{stage}"))?.run_id;
    store
        .read_provenance(source)
        .ok()?
        .fingerprint
        .map(|f| f.sha256)
}

impl Session {
    /// Loads run `reference` (id, id prefix or experiment name) from the store at its
    /// latest completed stage.
    pub fn load(store: &Store, reference: &str) -> Result<Self> {
        Self::load_stage(store, reference, None)
    }

    /// [`Session::load`] at a given stage (`None`: stage 2 when completed, else stage 1).
    pub fn load_stage(store: &Store, reference: &str, stage: Option<u8>) -> Result<Self> {
        let run_id = store.resolve(reference)?;
        let exp = store.read_experiment(&run_id)?;
        let s2 = stage_final_dir(store, &run_id, 2)?;
        let s1 = stage_final_dir(store, &run_id, 1)?;
        let (stage, weights_dir) = match (stage, s2, s1) {
            (None | Some(2), Some(d), _) => (2, d),
            (Some(2), None, _) => bail!("run {run_id} has not completed stage 2"),
            (None | Some(1), _, Some(d)) => (1, d),
            (Some(s), _, _) if s != 1 && s != 2 => bail!("there is no stage {s} (1 or 2)"),
            _ => bail!("run {run_id} has no completed stage to load (see `harness show {run_id}`)"),
        };
        let device = crate::backend::device(exp.devices.first().copied().unwrap_or(0));
        let code = weights_code(store, &run_id, stage);
        let dirs = assembly::backbone_dirs_for_code(&exp, code.as_deref())?;
        let (vision_dir, lm_dir) = (dirs.vision, dirs.lm);

        let (select, pre) = assembly::vision_setup(&exp, &vision_dir)?;
        let clip = ClipExtractor::<Compute>::from_dir(&vision_dir, select, &device)
            .with_context(|| format!("loading the vision tower from {}", vision_dir.display()))?;
        let tok = Tokenizer::from_dir(&lm_dir)
            .with_context(|| format!("tokenizer of {}", lm_dir.display()))?;
        let lora = assembly::lora_config(&exp, stage);
        let (mut lm, lm_config) = assembly::load_lm::<Compute>(&exp, &lm_dir, &lora, &device)?;
        if stage == 2 {
            lm = assembly::load_adapters(lm, &weights_dir, &device)?;
        }
        let projector = assembly::projector_config(&exp, clip.dim(), lm_config.hidden_size)
            .init::<Compute>(&device);
        let projector = assembly::load_projector(projector, &weights_dir, &device)?;

        let template = ChatTemplate::named(&exp.data.template)?;
        let end = if template.end.is_empty() {
            vec![]
        } else if let Some(id) = TextCodec::token_to_id(&tok, &template.end) {
            vec![id]
        } else {
            tok.encode(&template.end)?
        };
        let opts = GenerateOptions::for_experiment(&exp, tok.eos_id);
        Ok(Self {
            run_id,
            exp,
            stage,
            weights_dir,
            vision_dir,
            lm_dir,
            lm_config,
            lora,
            projector,
            lm,
            tok,
            clip,
            preprocess: pre,
            template,
            end,
            opts,
            device,
        })
    }

    /// CLIP features `[images, patches, d_vision]` of image files, preprocessed exactly as
    /// the run's feature cache was (same decoder, preprocessing and feature selection).
    pub fn features(&self, images: &[PathBuf]) -> Result<Tensor<Compute, 3>> {
        ensure!(!images.is_empty(), "no images given");
        let (t, d) = (self.clip.tokens(), self.clip.dim());
        let mut flat = Vec::with_capacity(images.len() * t * d);
        for chunk in images.chunks(CLIP_BATCH) {
            let pixels = chunk
                .iter()
                .map(|p| {
                    // The error names the file.
                    Ok(preprocess(&load_image(p)?, &self.preprocess))
                })
                .collect::<Result<Vec<_>>>()?;
            for f in self.clip.extract(&pixels)? {
                flat.extend(f);
            }
        }
        Ok(Tensor::from_data(
            TensorData::new(flat, [images.len(), t, d]),
            &self.device,
        ))
    }

    /// The end token generation stops at: the template's single end token, else eos.
    pub fn answer_eos(&self) -> Option<u32> {
        match self.end.as_slice() {
            [one] => Some(*one),
            _ => self.tok.eos_id,
        }
    }

    /// One caption per image with the stage-1 layout (`[image]` then the caption).
    pub fn caption(&self, images: &[PathBuf]) -> Result<Vec<String>> {
        let layouts = vec![PromptLayout::caption(); images.len()];
        self.generate(images, &layouts, self.tok.eos_id)
    }

    /// One caption per image, asked through the chat template with `prompt` (e.g.
    /// "Describe the image."), for instruction-tuned models.
    pub fn caption_with_prompt(&self, images: &[PathBuf], prompt: &str) -> Result<Vec<String>> {
        let layout = PromptLayout::question(&self.tok, &self.template, prompt)?;
        self.generate(images, &vec![layout; images.len()], self.answer_eos())
    }

    fn generate(
        &self,
        images: &[PathBuf],
        layouts: &[PromptLayout],
        eos: Option<u32>,
    ) -> Result<Vec<String>> {
        let feats = self.features(images)?;
        let opts = GenerateOptions {
            eos,
            ..self.opts.clone()
        };
        let pad = self.tok.pad_id.unwrap_or(0);
        generate_for_images(
            &self.projector,
            &self.lm,
            feats,
            layouts,
            pad,
            &opts,
            CLIP_BATCH,
        )
        .iter()
        .map(|g| decode(&self.tok, g, eos))
        .collect()
    }

    /// The answer to one question about `image` (a fresh conversation).
    pub fn answer(&self, image: &Path, question: &str) -> Result<String> {
        self.chat(image)?.ask(question)
    }

    /// A conversation about `image`; each [`Chat::ask`] sees every earlier turn.
    pub fn chat(&self, image: &Path) -> Result<Chat<'_>> {
        let features = self.features(&[image.to_path_buf()])?;
        Ok(Chat {
            session: self,
            features,
            past: vec![],
        })
    }
}

/// The prompt for `question` after the turns `past` (each a question and the answer's
/// tokens, end marker excluded), laid out as stage 2 trains on conversations:
/// `system user [image] image_sep Q1 assistant A1 end user Q2 assistant A2 end ... user Q
/// assistant`, each piece tokenized on its own as
/// [`crate::data::sequence::SequenceBuilder::conversation`] does. With answers tokenized as
/// `answer_prefix + answer`, `before + image slot + after` is exactly the training
/// sequence's prefix.
pub fn chat_layout(
    tok: &Tokenizer,
    template: &ChatTemplate,
    end: &[u32],
    past: &[(String, Vec<u32>)],
    question: &str,
) -> Result<PromptLayout> {
    let Some(((q0, _), _)) = past.split_first() else {
        return PromptLayout::question(tok, template, question);
    };
    let mut layout = PromptLayout::question(tok, template, q0)?;
    let turns = past.iter().map(|(_, a)| a).zip(
        past.iter()
            .skip(1)
            .map(|(q, _)| q.as_str())
            .chain([question]),
    );
    for (answer, next) in turns {
        layout.after.extend_from_slice(answer);
        layout.after.extend_from_slice(end);
        let piece = format!("{}{}{}", template.user, next, template.assistant);
        if !piece.is_empty() {
            layout.after.extend(tok.encode(&piece)?);
        }
    }
    Ok(layout)
}

/// A multi-turn conversation about one image ([`chat_layout`]); earlier answers are kept
/// as the tokens the model generated.
pub struct Chat<'a> {
    session: &'a Session,
    /// `[1, patches, d_vision]`.
    features: Tensor<Compute, 3>,
    /// Closed turns: question and answer tokens (end marker excluded).
    past: Vec<(String, Vec<u32>)>,
}

impl Chat<'_> {
    /// Turns answered so far.
    pub fn turns(&self) -> usize {
        self.past.len()
    }

    /// The prompt layout for the next question.
    pub fn layout(&self, question: &str) -> Result<PromptLayout> {
        let s = self.session;
        chat_layout(&s.tok, &s.template, &s.end, &self.past, question)
    }

    /// Answers `question` given the conversation so far, and records the turn (closed with
    /// the end marker in later prompts, also when generation stopped at `max_new_tokens`).
    pub fn ask(&mut self, question: &str) -> Result<String> {
        let s = self.session;
        let layout = self.layout(question)?;
        let eos = s.answer_eos();
        let opts = GenerateOptions {
            eos,
            ..s.opts.clone()
        };
        let pad = s.tok.pad_id.unwrap_or(0);
        let g = generate_for_images(
            &s.projector,
            &s.lm,
            self.features.clone(),
            std::slice::from_ref(&layout),
            pad,
            &opts,
            1,
        )
        .pop()
        .expect("one generation");
        let text = decode(&s.tok, &g, eos)?;
        self.past
            .push((question.to_string(), g.text_tokens(eos).to_vec()));
        Ok(text)
    }
}
