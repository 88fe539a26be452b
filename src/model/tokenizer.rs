//! The LM's tokenizer: the checkpoint's `tokenizer.json` (GPT-2 style byte-level BPE for
//! Phi-2) through the `tokenizers` crate, with the special ids `config.json` names.

use std::path::Path;

use anyhow::{anyhow, Context};

use super::phi::PhiConfig;

pub struct Tokenizer {
    inner: tokenizers::Tokenizer,
    pub bos_id: Option<u32>,
    pub eos_id: Option<u32>,
    /// `pad_token_id`, else the eos id (Phi-2 pads with `<|endoftext|>`).
    pub pad_id: Option<u32>,
}

impl Tokenizer {
    /// `dir/tokenizer.json` with the ids from `dir/config.json`.
    pub fn from_dir(dir: &Path) -> anyhow::Result<Self> {
        let cfg = PhiConfig::load(dir)?;
        Self::from_file(&dir.join("tokenizer.json"), &cfg)
    }

    pub fn from_file(path: &Path, cfg: &PhiConfig) -> anyhow::Result<Self> {
        if !path.exists() {
            anyhow::bail!("missing file {}", path.display());
        }
        let inner = tokenizers::Tokenizer::from_file(path)
            .map_err(|e| anyhow!("{}: {e}", path.display()))?;
        let id = |x: Option<usize>| x.map(|v| v as u32);
        Ok(Self {
            inner,
            bos_id: id(cfg.bos_token_id),
            eos_id: id(cfg.eos_token_id),
            pad_id: id(cfg.pad_token_id.or(cfg.eos_token_id)),
        })
    }

    /// Token ids of `text`. Special tokens written in the text (e.g. `<|endoftext|>`) map to
    /// their ids; nothing is added around it (Phi's tokenizer adds no BOS).
    pub fn encode(&self, text: &str) -> anyhow::Result<Vec<u32>> {
        let enc = self
            .inner
            .encode(text, false)
            .map_err(|e| anyhow!("encoding {text:?}: {e}"))
            .context("tokenizer")?;
        Ok(enc.get_ids().to_vec())
    }

    pub fn decode(&self, ids: &[u32], skip_special: bool) -> anyhow::Result<String> {
        self.inner
            .decode(ids, skip_special)
            .map_err(|e| anyhow!("decoding: {e}"))
    }

    pub fn token_to_id(&self, token: &str) -> Option<u32> {
        self.inner.token_to_id(token)
    }

    pub fn vocab_size(&self) -> usize {
        self.inner.get_vocab_size(true)
    }
}
