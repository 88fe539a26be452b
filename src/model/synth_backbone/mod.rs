//! Real-size random checkpoints without downloads (`harness synth backbone`): folders with
//! the exact file layout, `config.json`, tensor names, shapes, dtypes and shard split of
//! `microsoft/phi-2` and the OpenAI CLIP towers, filled with seeded random weights drawn
//! like a trained network's (normal, std 0.02, for matrices, embeddings and linear biases;
//! LayerNorm weights 1 and biases 0), so the harness can be run, timed and NF4-quantised
//! at full size before any real checkpoint is at hand.
//!
//! - [`draw`], the seeded values (a function of seed, tensor name and element index)
//! - [`writer`], the generic streaming safetensors writer over a list of [`TensorSpec`]s
//! - [`gpt2_bpe`], Phi-2's tokenizer rebuilt from GPT-2's embedded BPE ranks
//! - [`pyjson`], JSON text byte-identical to what transformers writes
//!
//! What each folder holds, and how it differs from the hub's:
//! - `phi-2`: `config.json` and `generation_config.json` byte-identical to the hub's,
//!   f16 weights in `model-00001-of-00002.safetensors` / `model-00002-of-00002.safetensors`
//!   split where the hub's are (5 GB shards: layer 30's `q_proj` closes the first), the
//!   index as `save_pretrained` writes it, and the tokenizer files ([`gpt2_bpe`]).
//! - `clip-vit-base-patch16`, `clip-vit-base-patch32`, `clip-vit-large-patch14-336`: the
//!   full `CLIPModel` (both towers, projections, `logit_scale`) in f32 in one
//!   `model.safetensors`, without the `position_ids` buffers the hub's converted files
//!   still carry (transformers no longer saves them; loading ignores them); the hub's
//!   legacy `preprocessor_config.json` byte for byte; `config.json` with every value the
//!   hub's carries for these models, written out in full rather than in the hub's legacy
//!   long form (no `text_config_dict` / `vision_config_dict` or generation defaults), and
//!   no CLIP tokenizer.

pub mod draw;
pub mod gpt2_bpe;
pub mod pyjson;
pub mod writer;

use std::fs;
use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{bail, Context, Result};
use safetensors::Dtype;
use serde_json::{json, Value};

pub use draw::Init;
pub use writer::{DrawOptions, TensorSpec};

/// transformers' `max_shard_size="5GB"` (decimal, as `convert_file_size_to_int` reads it),
/// what the hub's checkpoints were saved with.
pub const HUB_MAX_SHARD_BYTES: u64 = 5_000_000_000;

/// The checkpoints `--like` can imitate.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Like {
    Phi2,
    ClipVitB16,
    ClipVitB32,
    ClipVitL14_336,
}

impl Like {
    pub const ALL: [Like; 4] = [
        Like::Phi2,
        Like::ClipVitB16,
        Like::ClipVitB32,
        Like::ClipVitL14_336,
    ];

    /// The hub repository it imitates.
    pub fn repo(self) -> &'static str {
        match self {
            Like::Phi2 => "microsoft/phi-2",
            Like::ClipVitB16 => "openai/clip-vit-base-patch16",
            Like::ClipVitB32 => "openai/clip-vit-base-patch32",
            Like::ClipVitL14_336 => "openai/clip-vit-large-patch14-336",
        }
    }

    /// `phi-2`, `microsoft/phi-2`, `clip-vit-base-patch16`, ... (case-insensitive).
    pub fn parse(name: &str) -> Result<Self> {
        let lower = name.to_ascii_lowercase();
        for like in Self::ALL {
            let repo = like.repo();
            let short = repo.split_once('/').map_or(repo, |(_, n)| n);
            if lower == repo || lower == short {
                return Ok(like);
            }
        }
        let known: Vec<&str> = Self::ALL.iter().map(|l| l.repo()).collect();
        bail!(
            "unknown --like `{name}`: expected one of {}",
            known.join(", ")
        )
    }
}

/// Testing aids that keep every width real but cut the depth or the vocabulary, so a test
/// can write and load a checkpoint with Phi-2's true layer shapes in seconds. The config
/// says the cut sizes; the tokenizer stays Phi-2's (ids may then pass `vocab_size`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Shrink {
    /// Decoder layers (CLIP: layers of each tower).
    pub layers: Option<usize>,
    /// Vocabulary rows (Phi: embedding and `lm_head`; CLIP: the text tower's tokens).
    pub vocab: Option<usize>,
}

/// Everything a synthetic checkpoint folder holds.
#[derive(Debug, Clone)]
pub struct BackboneSpec {
    pub like: Like,
    /// In state-dict order (the order shards are cut in).
    pub tensors: Vec<TensorSpec>,
    /// Shard size the hub's files were saved with.
    pub max_shard_bytes: u64,
    /// Small text files beside the weights: (name, exact contents).
    pub files: Vec<(String, String)>,
    /// Whether Phi-2's tokenizer files are written too.
    pub tokenizer: bool,
}

impl BackboneSpec {
    /// Parameter count.
    pub fn params(&self) -> u64 {
        self.tensors.iter().map(|t| t.numel() as u64).sum()
    }

    /// Bytes of tensor data (`metadata.total_size` of the index).
    pub fn data_bytes(&self) -> u64 {
        self.tensors.iter().map(TensorSpec::nbytes).sum()
    }
}

/// The spec of a `--like` checkpoint, possibly shrunk.
pub fn spec(like: Like, shrink: Shrink) -> Result<BackboneSpec> {
    for (what, v) in [("layers", shrink.layers), ("vocab", shrink.vocab)] {
        if v == Some(0) {
            bail!("--shrink-{what} must be at least 1");
        }
    }
    Ok(match like {
        Like::Phi2 => phi2(shrink),
        Like::ClipVitB16 | Like::ClipVitB32 | Like::ClipVitL14_336 => clip(like, shrink),
    })
}

/// The config text as transformers writes it (`json.dumps(indent=2, sort_keys=True)` and a
/// newline).
fn config_text(v: &Value) -> String {
    pyjson::dumps(v, true) + "\n"
}

fn linear(
    t: &mut Vec<TensorSpec>,
    prefix: &str,
    d_in: usize,
    d_out: usize,
    bias: bool,
    dtype: Dtype,
) {
    t.push(TensorSpec::new(
        format!("{prefix}.weight"),
        &[d_out, d_in],
        dtype,
        Init::Normal,
    ));
    if bias {
        t.push(TensorSpec::new(
            format!("{prefix}.bias"),
            &[d_out],
            dtype,
            Init::Normal,
        ));
    }
}

fn layer_norm(t: &mut Vec<TensorSpec>, prefix: &str, d: usize, dtype: Dtype) {
    t.push(TensorSpec::new(
        format!("{prefix}.weight"),
        &[d],
        dtype,
        Init::Constant(1.0),
    ));
    t.push(TensorSpec::new(
        format!("{prefix}.bias"),
        &[d],
        dtype,
        Init::Constant(0.0),
    ));
}

/// microsoft/phi-2 (PhiForCausalLM, f16, 2.78 B parameters).
fn phi2(shrink: Shrink) -> BackboneSpec {
    let (d, f) = (2560, 10240);
    let layers = shrink.layers.unwrap_or(32);
    let vocab = shrink.vocab.unwrap_or(51200);
    let dt = Dtype::F16;
    let mut t = vec![TensorSpec::new(
        "model.embed_tokens.weight",
        &[vocab, d],
        dt,
        Init::Normal,
    )];
    for i in 0..layers {
        let p = format!("model.layers.{i}");
        for name in ["q_proj", "k_proj", "v_proj", "dense"] {
            linear(&mut t, &format!("{p}.self_attn.{name}"), d, d, true, dt);
        }
        linear(&mut t, &format!("{p}.mlp.fc1"), d, f, true, dt);
        linear(&mut t, &format!("{p}.mlp.fc2"), f, d, true, dt);
        layer_norm(&mut t, &format!("{p}.input_layernorm"), d, dt);
    }
    layer_norm(&mut t, "model.final_layernorm", d, dt);
    linear(&mut t, "lm_head", d, vocab, true, dt);
    // The hub's config.json as it is (transformers 4.37.0 wrote it).
    let config = json!({
        "_name_or_path": "microsoft/phi-2",
        "architectures": ["PhiForCausalLM"],
        "attention_dropout": 0.0,
        "bos_token_id": 50256,
        "embd_pdrop": 0.0,
        "eos_token_id": 50256,
        "hidden_act": "gelu_new",
        "hidden_size": d,
        "initializer_range": 0.02,
        "intermediate_size": f,
        "layer_norm_eps": 1e-5,
        "max_position_embeddings": 2048,
        "model_type": "phi",
        "num_attention_heads": 32,
        "num_hidden_layers": layers,
        "num_key_value_heads": 32,
        "partial_rotary_factor": 0.4,
        "qk_layernorm": false,
        "resid_pdrop": 0.1,
        "rope_scaling": null,
        "rope_theta": 10000.0,
        "tie_word_embeddings": false,
        "torch_dtype": "float16",
        "transformers_version": "4.37.0",
        "use_cache": true,
        "vocab_size": vocab,
    });
    // The hub's generation_config.json was edited by hand: its keys are not sorted.
    let generation = "{\n  \"_from_model_config\": true,\n  \"transformers_version\": \"4.37.0.dev0\",\n  \"eos_token_id\": 50256,\n  \"bos_token_id\": 50256\n}\n";
    BackboneSpec {
        like: Like::Phi2,
        tensors: t,
        max_shard_bytes: HUB_MAX_SHARD_BYTES,
        files: vec![
            ("config.json".into(), config_text(&config)),
            ("generation_config.json".into(), generation.into()),
        ],
        tokenizer: true,
    }
}

/// One CLIP tower's widths.
struct Tower {
    hidden: usize,
    intermediate: usize,
    layers: usize,
    heads: usize,
}

/// The OpenAI CLIP checkpoints (CLIPModel, f32).
fn clip(like: Like, shrink: Shrink) -> BackboneSpec {
    let (text, vision, patch, image, proj, (bos, eos)) = match like {
        Like::ClipVitB16 | Like::ClipVitB32 => (
            Tower {
                hidden: 512,
                intermediate: 2048,
                layers: 12,
                heads: 8,
            },
            Tower {
                hidden: 768,
                intermediate: 3072,
                layers: 12,
                heads: 12,
            },
            if like == Like::ClipVitB16 { 16 } else { 32 },
            224,
            512,
            // These two configs set the text tower's ids to 0 and 2 ...
            (0, 2),
        ),
        _ => (
            Tower {
                hidden: 768,
                intermediate: 3072,
                layers: 12,
                heads: 12,
            },
            Tower {
                hidden: 1024,
                intermediate: 4096,
                layers: 24,
                heads: 16,
            },
            14,
            336,
            768,
            // ... this one leaves CLIPTextConfig's defaults.
            (49406, 49407),
        ),
    };
    let text_layers = shrink.layers.unwrap_or(text.layers);
    let vision_layers = shrink.layers.unwrap_or(vision.layers);
    let vocab = shrink.vocab.unwrap_or(49408);
    let positions = 77;
    let patches = (image / patch) * (image / patch);
    let dt = Dtype::F32;
    let encoder = |t: &mut Vec<TensorSpec>, pre: &str, w: &Tower, layers: usize| {
        let (d, f) = (w.hidden, w.intermediate);
        for i in 0..layers {
            let p = format!("{pre}.encoder.layers.{i}");
            for name in ["k_proj", "v_proj", "q_proj", "out_proj"] {
                linear(t, &format!("{p}.self_attn.{name}"), d, d, true, dt);
            }
            layer_norm(t, &format!("{p}.layer_norm1"), d, dt);
            linear(t, &format!("{p}.mlp.fc1"), d, f, true, dt);
            linear(t, &format!("{p}.mlp.fc2"), f, d, true, dt);
            layer_norm(t, &format!("{p}.layer_norm2"), d, dt);
        }
    };
    // A trained CLIP's temperature sits at its clamp, ln(100).
    let mut t = vec![TensorSpec::new(
        "logit_scale",
        &[],
        dt,
        Init::Constant(100f32.ln()),
    )];
    let (dt_, dv) = (text.hidden, vision.hidden);
    t.push(TensorSpec::new(
        "text_model.embeddings.token_embedding.weight",
        &[vocab, dt_],
        dt,
        Init::Normal,
    ));
    t.push(TensorSpec::new(
        "text_model.embeddings.position_embedding.weight",
        &[positions, dt_],
        dt,
        Init::Normal,
    ));
    encoder(&mut t, "text_model", &text, text_layers);
    layer_norm(&mut t, "text_model.final_layer_norm", dt_, dt);
    t.push(TensorSpec::new(
        "vision_model.embeddings.class_embedding",
        &[dv],
        dt,
        Init::Normal,
    ));
    t.push(TensorSpec::new(
        "vision_model.embeddings.patch_embedding.weight",
        &[dv, 3, patch, patch],
        dt,
        Init::Normal,
    ));
    t.push(TensorSpec::new(
        "vision_model.embeddings.position_embedding.weight",
        &[patches + 1, dv],
        dt,
        Init::Normal,
    ));
    layer_norm(&mut t, "vision_model.pre_layrnorm", dv, dt);
    encoder(&mut t, "vision_model", &vision, vision_layers);
    layer_norm(&mut t, "vision_model.post_layernorm", dv, dt);
    linear(&mut t, "visual_projection", dv, proj, false, dt);
    linear(&mut t, "text_projection", dt_, proj, false, dt);

    let config = json!({
        "_name_or_path": like.repo(),
        "architectures": ["CLIPModel"],
        "initializer_factor": 1.0,
        "logit_scale_init_value": 2.6592,
        "model_type": "clip",
        "projection_dim": proj,
        "text_config": {
            "attention_dropout": 0.0,
            "bos_token_id": bos,
            "dropout": 0.0,
            "eos_token_id": eos,
            "hidden_act": "quick_gelu",
            "hidden_size": text.hidden,
            "initializer_factor": 1.0,
            "initializer_range": 0.02,
            "intermediate_size": text.intermediate,
            "layer_norm_eps": 1e-5,
            "max_position_embeddings": positions,
            "model_type": "clip_text_model",
            "num_attention_heads": text.heads,
            "num_hidden_layers": text_layers,
            "pad_token_id": 1,
            "projection_dim": proj,
            "vocab_size": vocab,
        },
        "torch_dtype": "float32",
        "transformers_version": null,
        "vision_config": {
            "attention_dropout": 0.0,
            "dropout": 0.0,
            "hidden_act": "quick_gelu",
            "hidden_size": vision.hidden,
            "image_size": image,
            "initializer_factor": 1.0,
            "initializer_range": 0.02,
            "intermediate_size": vision.intermediate,
            "layer_norm_eps": 1e-5,
            "model_type": "clip_vision_model",
            "num_attention_heads": vision.heads,
            "num_channels": 3,
            "num_hidden_layers": vision_layers,
            "patch_size": patch,
            "projection_dim": proj,
        },
    });
    // The legacy CLIPFeatureExtractor form the openai repositories ship.
    let preprocessor = json!({
        "crop_size": image,
        "do_center_crop": true,
        "do_normalize": true,
        "do_resize": true,
        "feature_extractor_type": "CLIPFeatureExtractor",
        "image_mean": [0.48145466, 0.4578275, 0.40821073],
        "image_std": [0.26862954, 0.26130258, 0.27577711],
        "resample": 3,
        "size": image,
    });
    BackboneSpec {
        like,
        tensors: t,
        max_shard_bytes: HUB_MAX_SHARD_BYTES,
        files: vec![
            ("config.json".into(), config_text(&config)),
            (
                "preprocessor_config.json".into(),
                config_text(&preprocessor),
            ),
        ],
        tokenizer: false,
    }
}

/// How a checkpoint folder is written.
#[derive(Debug, Clone)]
pub struct WriteOptions {
    pub draw: DrawOptions,
    /// Shard size instead of the hub's.
    pub max_shard_bytes: Option<u64>,
    /// Replace an existing `out` folder.
    pub force: bool,
    /// Draw a progress bar on stderr (hidden anyway when stderr is not a terminal).
    pub progress: bool,
}

/// What was written.
#[derive(Debug, Clone)]
pub struct Written {
    pub dir: PathBuf,
    /// (file name, bytes), weights first.
    pub files: Vec<(String, u64)>,
    pub tensors: usize,
    pub params: u64,
    pub seconds: f64,
}

/// Writes the folder `out` for `spec`: everything goes into a temporary sibling folder,
/// each file fsynced, and the folder is renamed into place when complete, so `out` is
/// either absent, the previous folder, or the whole new checkpoint.
pub fn write_backbone(spec: &BackboneSpec, out: &Path, opts: &WriteOptions) -> Result<Written> {
    let start = Instant::now();
    if out.exists() && !opts.force {
        bail!(
            "{} already exists (pass --force to replace it)",
            out.display()
        );
    }
    let parent = match out.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    };
    fs::create_dir_all(&parent).with_context(|| format!("cannot create {}", parent.display()))?;
    let tmp = crate::fsutil::temp_sibling(out);
    fs::create_dir(&tmp).with_context(|| format!("cannot create {}", tmp.display()))?;
    let result = fill_folder(spec, &tmp, opts);
    let files = match result {
        Ok(files) => files,
        Err(e) => {
            let _ = fs::remove_dir_all(&tmp);
            return Err(e);
        }
    };
    if out.exists() {
        let old = crate::fsutil::temp_sibling(out);
        fs::rename(out, &old).with_context(|| format!("cannot move {} aside", out.display()))?;
        fs::rename(&tmp, out)
            .with_context(|| format!("cannot rename {} to {}", tmp.display(), out.display()))?;
        fs::remove_dir_all(&old).with_context(|| format!("cannot remove {}", old.display()))?;
    } else {
        fs::rename(&tmp, out)
            .with_context(|| format!("cannot rename {} to {}", tmp.display(), out.display()))?;
    }
    crate::fsutil::sync_dir(&parent);
    Ok(Written {
        dir: out.to_path_buf(),
        files,
        tensors: spec.tensors.len(),
        params: spec.params(),
        seconds: start.elapsed().as_secs_f64(),
    })
}

fn fill_folder(spec: &BackboneSpec, dir: &Path, opts: &WriteOptions) -> Result<Vec<(String, u64)>> {
    let total = spec.data_bytes();
    let bar = if opts.progress {
        indicatif::ProgressBar::new(total)
    } else {
        indicatif::ProgressBar::hidden()
    };
    if let Ok(style) = indicatif::ProgressStyle::with_template(
        "{msg} [{bar:40}] {binary_bytes}/{binary_total_bytes} {binary_bytes_per_sec} eta {eta}",
    ) {
        bar.set_style(style.progress_chars("=> "));
    }
    bar.set_message(spec.like.repo().to_string());
    let max_shard = opts.max_shard_bytes.unwrap_or(spec.max_shard_bytes);
    let mut files =
        writer::write_checkpoint(dir, &spec.tensors, max_shard, &opts.draw, &mut |n| {
            bar.inc(n)
        })?;
    bar.finish_and_clear();
    let mut small: Vec<String> = Vec::new();
    for (name, text) in &spec.files {
        fs::write(dir.join(name), text)
            .with_context(|| format!("cannot write {}", dir.join(name).display()))?;
        small.push(name.clone());
    }
    if spec.tokenizer {
        small.extend(gpt2_bpe::write_tokenizer(dir)?);
    }
    for name in small {
        let path = dir.join(&name);
        let f = fs::File::open(&path).with_context(|| format!("cannot open {}", path.display()))?;
        f.sync_all()
            .with_context(|| format!("cannot fsync {}", path.display()))?;
        files.push((name, f.metadata()?.len()));
    }
    Ok(files)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Phi-2's parameters counted by hand: embedding and lm_head 51200 x 2560 (+ bias),
    /// per layer 4 (2560^2 + 2560) + (2560 x 10240 + 10240) + (10240 x 2560 + 2560) + 2 x 2560.
    const PHI2_PARAMS: u64 = 131_072_000 + 32 * 78_671_360 + 5_120 + 131_123_200;

    #[test]
    fn phi2_has_the_hubs_tensors_and_total_size() {
        let s = spec(Like::Phi2, Shrink::default()).unwrap();
        assert_eq!(s.params(), PHI2_PARAMS);
        assert_eq!(s.params(), 2_779_683_840);
        // The hub index's metadata.total_size.
        assert_eq!(s.data_bytes(), 5_559_367_680);
        assert_eq!(s.tensors.len(), 1 + 32 * 14 + 2 + 2);
        assert!(s.tensors.iter().all(|t| t.dtype == Dtype::F16));
        let get = |n: &str| s.tensors.iter().find(|t| t.name == n).unwrap();
        assert_eq!(get("model.layers.31.mlp.fc1.weight").shape, [10240, 2560]);
        assert_eq!(get("model.layers.0.mlp.fc2.weight").shape, [2560, 10240]);
        assert_eq!(get("lm_head.bias").shape, [51200]);
        assert_eq!(
            get("model.layers.7.input_layernorm.weight").init,
            Init::Constant(1.0)
        );
        assert_eq!(get("model.final_layernorm.bias").init, Init::Constant(0.0));
    }

    #[test]
    fn phi2_shards_split_where_the_hubs_do() {
        let s = spec(Like::Phi2, Shrink::default()).unwrap();
        let shards = writer::plan_shards(&s.tensors, s.max_shard_bytes);
        assert_eq!(shards.len(), 2);
        let names = |i: usize| -> Vec<&str> {
            shards[i]
                .iter()
                .map(|&k| s.tensors[k].name.as_str())
                .collect()
        };
        let first = names(0);
        // Layers 0-29 whole (262,144,000 + 30 x 157,342,720 bytes), then layer 30's q_proj
        // (13,107,200 + 5,120): 4,995,537,920 bytes; k_proj would pass 5e9.
        assert_eq!(
            *first.last().unwrap(),
            "model.layers.30.self_attn.q_proj.bias"
        );
        assert!(first.contains(&"model.layers.29.input_layernorm.bias"));
        assert_eq!(names(1)[0], "model.layers.30.self_attn.k_proj.weight");
        let bytes = |i: usize| {
            shards[i]
                .iter()
                .map(|&k| s.tensors[k].nbytes())
                .sum::<u64>()
        };
        assert_eq!(bytes(0), 4_995_537_920);
        assert_eq!(bytes(1), 563_829_760);
        assert!(names(1).contains(&"lm_head.weight"));
        assert!(names(1).contains(&"model.final_layernorm.weight"));
    }

    #[test]
    fn phi2_config_is_the_hubs_file() {
        let s = spec(Like::Phi2, Shrink::default()).unwrap();
        // microsoft/phi-2's config.json (735 bytes).
        let want = r#"{
  "_name_or_path": "microsoft/phi-2",
  "architectures": [
    "PhiForCausalLM"
  ],
  "attention_dropout": 0.0,
  "bos_token_id": 50256,
  "embd_pdrop": 0.0,
  "eos_token_id": 50256,
  "hidden_act": "gelu_new",
  "hidden_size": 2560,
  "initializer_range": 0.02,
  "intermediate_size": 10240,
  "layer_norm_eps": 1e-05,
  "max_position_embeddings": 2048,
  "model_type": "phi",
  "num_attention_heads": 32,
  "num_hidden_layers": 32,
  "num_key_value_heads": 32,
  "partial_rotary_factor": 0.4,
  "qk_layernorm": false,
  "resid_pdrop": 0.1,
  "rope_scaling": null,
  "rope_theta": 10000.0,
  "tie_word_embeddings": false,
  "torch_dtype": "float16",
  "transformers_version": "4.37.0",
  "use_cache": true,
  "vocab_size": 51200
}
"#;
        assert_eq!(s.files[0], ("config.json".to_string(), want.to_string()));
        assert_eq!(want.len(), 735);
        assert_eq!(s.files[1].1.len(), 124); // the hub's generation_config.json size
        let gen: Value = serde_json::from_str(&s.files[1].1).unwrap();
        assert_eq!(gen["eos_token_id"], 50256);
    }

    #[test]
    fn clip_towers_have_transformers_shapes() {
        // CLIP ViT-B/16 counted by hand: text 49408 x 512 + 77 x 512 + 12 layers of
        // (4 (512^2 + 512) + 2 (2 x 512) + (512 x 2048 + 2048) + (2048 x 512 + 512)) + 2 x 512;
        // vision 768 + 768 x 3 x 16 x 16 + 197 x 768 + 2 x 768 + 12 layers of the same form at
        // 768/3072 + 2 x 768; projections 512 x 768 + 512 x 512; logit_scale 1.
        let text = 49408 * 512
            + 77 * 512
            + 12 * (4 * (512 * 512 + 512) + 4 * 512 + 2 * 512 * 2048 + 2048 + 512)
            + 2 * 512;
        let vision = 768
            + 768 * 3 * 16 * 16
            + 197 * 768
            + 2 * 768
            + 12 * (4 * (768 * 768 + 768) + 4 * 768 + 2 * 768 * 3072 + 3072 + 768)
            + 2 * 768;
        let b16 = spec(Like::ClipVitB16, Shrink::default()).unwrap();
        assert_eq!(
            b16.params(),
            (text + vision + 512 * 768 + 512 * 512 + 1) as u64
        );
        assert_eq!(b16.params(), 149_620_737);
        let l14 = spec(Like::ClipVitL14_336, Shrink::default()).unwrap();
        let get = |s: &BackboneSpec, n: &str| {
            s.tensors
                .iter()
                .find(|t| t.name == n)
                .unwrap()
                .shape
                .clone()
        };
        assert_eq!(
            get(&l14, "vision_model.embeddings.position_embedding.weight"),
            [577, 1024]
        );
        assert_eq!(
            get(&l14, "vision_model.embeddings.patch_embedding.weight"),
            [1024, 3, 14, 14]
        );
        assert_eq!(
            get(&l14, "vision_model.encoder.layers.23.mlp.fc1.weight"),
            [4096, 1024]
        );
        assert_eq!(get(&l14, "visual_projection.weight"), [768, 1024]);
        assert_eq!(get(&l14, "text_projection.weight"), [768, 768]);
        assert_eq!(get(&l14, "logit_scale"), Vec::<usize>::new());
        assert!(l14.tensors.iter().all(|t| t.dtype == Dtype::F32));
        let b32 = spec(Like::ClipVitB32, Shrink::default()).unwrap();
        assert_eq!(
            get(&b32, "vision_model.embeddings.position_embedding.weight"),
            [50, 768]
        );
        // One file at the hub's shard size.
        assert_eq!(
            writer::plan_shards(&l14.tensors, l14.max_shard_bytes).len(),
            1
        );
    }

    #[test]
    fn clip_preprocessor_is_the_hubs_legacy_file() {
        let s = spec(Like::ClipVitL14_336, Shrink::default()).unwrap();
        let (name, text) = &s.files[1];
        assert_eq!(name, "preprocessor_config.json");
        let want = "{\n  \"crop_size\": 336,\n  \"do_center_crop\": true,\n  \"do_normalize\": true,\n  \"do_resize\": true,\n  \"feature_extractor_type\": \"CLIPFeatureExtractor\",\n  \"image_mean\": [\n    0.48145466,\n    0.4578275,\n    0.40821073\n  ],\n  \"image_std\": [\n    0.26862954,\n    0.26130258,\n    0.27577711\n  ],\n  \"resample\": 3,\n  \"size\": 336\n}\n";
        assert_eq!(text, want);
        assert_eq!(text.len(), 316); // the hub's file size
    }

    #[test]
    fn shrink_cuts_depth_and_vocabulary_only() {
        let s = spec(
            Like::Phi2,
            Shrink {
                layers: Some(2),
                vocab: Some(1000),
            },
        )
        .unwrap();
        assert_eq!(s.tensors.len(), 1 + 2 * 14 + 4);
        let cfg: Value = serde_json::from_str(&s.files[0].1).unwrap();
        assert_eq!(cfg["num_hidden_layers"], 2);
        assert_eq!(cfg["vocab_size"], 1000);
        assert_eq!(cfg["hidden_size"], 2560);
        let c = spec(
            Like::ClipVitB16,
            Shrink {
                layers: Some(1),
                vocab: None,
            },
        )
        .unwrap();
        let cfg: Value = serde_json::from_str(&c.files[0].1).unwrap();
        assert_eq!(cfg["vision_config"]["num_hidden_layers"], 1);
        assert_eq!(cfg["text_config"]["num_hidden_layers"], 1);
        assert!(spec(
            Like::Phi2,
            Shrink {
                layers: Some(0),
                vocab: None
            }
        )
        .is_err());
    }

    #[test]
    fn like_names_parse() {
        assert_eq!(Like::parse("phi-2").unwrap(), Like::Phi2);
        assert_eq!(Like::parse("microsoft/phi-2").unwrap(), Like::Phi2);
        assert_eq!(
            Like::parse("openai/clip-vit-large-patch14-336").unwrap(),
            Like::ClipVitL14_336
        );
        assert_eq!(
            Like::parse("CLIP-ViT-Base-Patch16").unwrap(),
            Like::ClipVitB16
        );
        let err = Like::parse("phi-3").unwrap_err().to_string();
        assert!(
            err.contains("unknown --like `phi-3`") && err.contains("microsoft/phi-2"),
            "{err}"
        );
    }

    fn opts(force: bool) -> WriteOptions {
        WriteOptions {
            draw: DrawOptions {
                seed: 5,
                std: 0.02,
                threads: 2,
            },
            max_shard_bytes: None,
            force,
            progress: false,
        }
    }

    /// A small CLIP: 1 layer per tower and 64 text tokens, the real widths.
    fn small_clip() -> BackboneSpec {
        spec(
            Like::ClipVitB32,
            Shrink {
                layers: Some(1),
                vocab: Some(64),
            },
        )
        .unwrap()
    }

    #[test]
    fn a_clip_folder_loads_through_the_harness_loaders() {
        use crate::backend::Compute;
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("clip");
        let s = small_clip();
        let w = write_backbone(&s, &out, &opts(false)).unwrap();
        let names: Vec<&str> = w.files.iter().map(|(n, _)| n.as_str()).collect();
        assert_eq!(
            names,
            [
                "model.safetensors",
                "config.json",
                "preprocessor_config.json"
            ]
        );
        let vcfg = crate::model::clip::ClipVisionConfig::load(&out).unwrap();
        assert_eq!(
            (vcfg.hidden_size, vcfg.patch_size, vcfg.num_hidden_layers),
            (768, 32, 1)
        );
        let pcfg = crate::model::preprocess::PreprocessConfig::load(&out).unwrap();
        assert_eq!(pcfg.crop, (224, 224));
        assert_eq!(
            pcfg.resize,
            crate::model::preprocess::Resize::ShortestEdge(224)
        );
        let (tower, _) =
            crate::model::clip::ClipVision::<Compute>::from_dir(&out, &Default::default()).unwrap();
        assert_eq!(tower.layers.len(), 1);
        // The loaded patch embedding is what the generator drew for that name.
        let ck = crate::model::checkpoint::Checkpoint::open(&out).unwrap();
        let name = "vision_model.embeddings.patch_embedding.weight";
        let want = draw::values(Init::Normal, 5, name, 768 * 3 * 32 * 32, 0.02);
        assert_eq!(ck.read_f32(name, &[768, 3, 32, 32]).unwrap(), want);
        assert_eq!(ck.read_f32("logit_scale", &[]).unwrap(), [100f32.ln()]);
        // No temporary folder is left beside it.
        assert_eq!(fs::read_dir(dir.path()).unwrap().count(), 1);
    }

    #[test]
    fn an_existing_folder_is_kept_unless_forced() {
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("clip");
        fs::create_dir(&out).unwrap();
        fs::write(out.join("keep.txt"), "x").unwrap();
        let err = write_backbone(&small_clip(), &out, &opts(false))
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("already exists") && err.contains("--force"),
            "{err}"
        );
        assert!(out.join("keep.txt").exists());
        write_backbone(&small_clip(), &out, &opts(true)).unwrap();
        assert!(!out.join("keep.txt").exists());
        assert!(out.join("model.safetensors").exists());
        assert_eq!(fs::read_dir(dir.path()).unwrap().count(), 1);
    }
}
