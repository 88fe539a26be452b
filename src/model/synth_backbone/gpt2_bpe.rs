//! Phi-2's tokenizer rebuilt offline: GPT-2's byte-level BPE, `<|endoftext|>` = 50256, and
//! the 38 whitespace tokens Phi-2 inherits from CodeGen (ids 50257-50294: runs of 31 down
//! to 2 spaces, then of 9 down to 2 tabs). Token count 50,295; the model's embedding is
//! padded to 51,200 rows.
//!
//! GPT-2's vocabulary comes from `assets/tokenizers/gpt2.tiktoken` (token bytes by rank,
//! embedded in the binary). The merge list is not stored there, so it is recovered the
//! standard way: token `r` (r >= 256) is what BPE makes of its own bytes using only the
//! tokens ranked below `r`, which leaves exactly two parts, and those two are merge `r`.
//! Tokens are written in GPT-2's byte-to-unicode alphabet (`Ġ` for a space, ...), as
//! `vocab.json`, `merges.txt`, and a `tokenizer.json` built and saved by the `tokenizers`
//! crate itself, plus transformers' side files (`tokenizer_config.json` naming
//! `CodeGenTokenizer` as Phi-2's does, `special_tokens_map.json`, `added_tokens.json`).

use std::collections::HashMap;
use std::path::Path;

use anyhow::{anyhow, bail, Context, Result};
use base64::Engine;
use serde_json::{json, Value};

use super::pyjson;

static GPT2_RANKS: &[u8] = include_bytes!("../../../assets/tokenizers/gpt2.tiktoken");

/// `<|endoftext|>`: bos, eos and pad of Phi-2, id 50256.
pub const ENDOFTEXT: &str = "<|endoftext|>";
pub const ENDOFTEXT_ID: u32 = 50256;

/// Ranked token bytes of GPT-2 (index = id), from the embedded `gpt2.tiktoken`.
pub fn gpt2_tokens() -> Result<Vec<Vec<u8>>> {
    let text = std::str::from_utf8(GPT2_RANKS).context("gpt2.tiktoken is not UTF-8")?;
    let mut tokens = Vec::with_capacity(50256);
    for (line_no, line) in text.lines().enumerate() {
        let (b64, rank) = line
            .split_once(' ')
            .ok_or_else(|| anyhow!("gpt2.tiktoken line {}: no rank", line_no + 1))?;
        let rank: usize = rank
            .parse()
            .with_context(|| format!("gpt2.tiktoken line {}: bad rank", line_no + 1))?;
        if rank != tokens.len() {
            bail!(
                "gpt2.tiktoken line {}: rank {rank} out of order",
                line_no + 1
            );
        }
        tokens.push(
            base64::engine::general_purpose::STANDARD
                .decode(b64)
                .with_context(|| format!("gpt2.tiktoken line {}", line_no + 1))?,
        );
    }
    Ok(tokens)
}

/// GPT-2's byte-to-unicode alphabet: printable Latin-1 bytes stand for themselves, the
/// other 68 (controls, space, ...) map to U+0100 upwards in byte order.
pub fn byte_alphabet() -> [char; 256] {
    let printable =
        |b: u32| (33..=126).contains(&b) || (161..=172).contains(&b) || (174..=255).contains(&b);
    let mut map = ['\0'; 256];
    let mut next = 256u32;
    for b in 0..256u32 {
        map[b as usize] = if printable(b) {
            char::from_u32(b).expect("Latin-1")
        } else {
            let c = char::from_u32(next).expect("U+01xx");
            next += 1;
            c
        };
    }
    map
}

/// Token bytes in the byte-level alphabet.
pub fn token_text(bytes: &[u8], alphabet: &[char; 256]) -> String {
    bytes.iter().map(|&b| alphabet[b as usize]).collect()
}

/// The merge that makes each token ranked 256 and above: (left id, right id).
pub fn recover_merges(tokens: &[Vec<u8>]) -> Result<Vec<(u32, u32)>> {
    let rank: HashMap<&[u8], u32> = tokens
        .iter()
        .enumerate()
        .map(|(i, t)| (t.as_slice(), i as u32))
        .collect();
    let mut merges = Vec::with_capacity(tokens.len().saturating_sub(256));
    for (r, token) in tokens.iter().enumerate().skip(256) {
        // BPE on the token's own bytes with the merges ranked below r.
        let mut parts: Vec<&[u8]> = (0..token.len()).map(|i| &token[i..i + 1]).collect();
        loop {
            let mut best: Option<(usize, u32)> = None;
            for i in 0..parts.len().saturating_sub(1) {
                let joined = &token[offset(&parts, i, token)..offset(&parts, i + 2, token)];
                if let Some(&q) = rank.get(joined) {
                    if (q as usize) < r && best.is_none_or(|(_, b)| q < b) {
                        best = Some((i, q));
                    }
                }
            }
            let Some((i, _)) = best else { break };
            let start = offset(&parts, i, token);
            let end = offset(&parts, i + 2, token);
            parts.splice(i..i + 2, [&token[start..end]]);
        }
        if parts.len() != 2 {
            bail!("GPT-2 token {r} does not split into two lower-ranked tokens");
        }
        merges.push((rank[parts[0]], rank[parts[1]]));
    }
    Ok(merges)
}

/// Byte offset in `token` where part `i` starts (`parts.len()` gives the end).
fn offset(parts: &[&[u8]], i: usize, token: &[u8]) -> usize {
    if i >= parts.len() {
        return token.len();
    }
    parts[i].as_ptr() as usize - token.as_ptr() as usize
}

/// The whitespace tokens after `<|endoftext|>`, in id order from 50257.
pub fn added_whitespace() -> Vec<String> {
    let spaces = (2..=31).rev().map(|n| " ".repeat(n));
    let tabs = (2..=9).rev().map(|n| "\t".repeat(n));
    spaces.chain(tabs).collect()
}

/// Writes `vocab.json`, `merges.txt`, `tokenizer.json`, `tokenizer_config.json`,
/// `special_tokens_map.json` and `added_tokens.json` into `dir`; returns their names.
pub fn write_tokenizer(dir: &Path) -> Result<Vec<String>> {
    let tokens = gpt2_tokens()?;
    let alphabet = byte_alphabet();
    let text: Vec<String> = tokens.iter().map(|t| token_text(t, &alphabet)).collect();
    let merges = recover_merges(&tokens)?;

    // vocab.json: compact, in id order, `<|endoftext|>` last (as GPT-2's has it).
    let mut vocab = String::from("{");
    for (id, t) in text
        .iter()
        .chain(std::iter::once(&ENDOFTEXT.to_string()))
        .enumerate()
    {
        if id > 0 {
            vocab.push(',');
        }
        vocab.push_str(&serde_json::to_string(t)?);
        vocab.push(':');
        vocab.push_str(&id.to_string());
    }
    vocab.push('}');
    let mut merges_txt = String::from("#version: 0.2\n");
    for (a, b) in &merges {
        merges_txt.push_str(&format!("{} {}\n", text[*a as usize], text[*b as usize]));
    }
    let write = |name: &str, body: &str| -> Result<()> {
        std::fs::write(dir.join(name), body)
            .with_context(|| format!("cannot write {}", dir.join(name).display()))
    };
    write("vocab.json", &vocab)?;
    write("merges.txt", &merges_txt)?;

    // tokenizer.json, composed and serialised by the tokenizers crate.
    use tokenizers::models::bpe::BPE;
    use tokenizers::pre_tokenizers::byte_level::ByteLevel;
    use tokenizers::AddedToken;
    let vocab_path = dir.join("vocab.json");
    let merges_path = dir.join("merges.txt");
    let bpe = BPE::from_file(
        vocab_path.to_str().context("non-UTF-8 output path")?,
        merges_path.to_str().context("non-UTF-8 output path")?,
    )
    .build()
    .map_err(|e| anyhow!("building GPT-2's BPE: {e}"))?;
    let mut tok = tokenizers::Tokenizer::new(bpe);
    tok.with_pre_tokenizer(Some(ByteLevel::new(false, true, true)));
    tok.with_post_processor(Some(ByteLevel::new(true, false, true)));
    tok.with_decoder(Some(ByteLevel::new(true, true, true)));
    tok.add_special_tokens(&[AddedToken::from(ENDOFTEXT, true)]);
    let ws = added_whitespace();
    let added: Vec<AddedToken> = ws
        .iter()
        .map(|s| AddedToken::from(s.clone(), false))
        .collect();
    tok.add_tokens(&added);
    let tok_path = dir.join("tokenizer.json");
    tok.save(&tok_path, true)
        .map_err(|e| anyhow!("cannot write {}: {e}", tok_path.display()))?;

    // transformers' side files (json.dumps(indent=2, sort_keys=True, ensure_ascii=False)).
    let entry = |content: &str, special: bool| {
        json!({"content": content, "lstrip": false, "normalized": !special,
               "rstrip": false, "single_word": false, "special": special})
    };
    let mut decoder = serde_json::Map::new();
    decoder.insert(ENDOFTEXT_ID.to_string(), entry(ENDOFTEXT, true));
    let mut added_map = serde_json::Map::new();
    for (i, s) in ws.iter().enumerate() {
        let id = ENDOFTEXT_ID + 1 + i as u32;
        decoder.insert(id.to_string(), entry(s, false));
        added_map.insert(s.clone(), json!(id));
    }
    let config = json!({
        "add_prefix_space": false,
        "added_tokens_decoder": decoder,
        "bos_token": ENDOFTEXT,
        "clean_up_tokenization_spaces": true,
        "eos_token": ENDOFTEXT,
        "model_max_length": 2048,
        "tokenizer_class": "CodeGenTokenizer",
        "unk_token": ENDOFTEXT,
    });
    let special = json!({"bos_token": ENDOFTEXT, "eos_token": ENDOFTEXT, "unk_token": ENDOFTEXT});
    let py = |v: &Value| pyjson::dumps(v, false) + "\n";
    write("tokenizer_config.json", &py(&config))?;
    write("special_tokens_map.json", &py(&special))?;
    write("added_tokens.json", &py(&Value::Object(added_map)))?;
    Ok([
        "vocab.json",
        "merges.txt",
        "tokenizer.json",
        "tokenizer_config.json",
        "special_tokens_map.json",
        "added_tokens.json",
    ]
    .map(String::from)
    .to_vec())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_alphabet_is_gpt2s() {
        let a = byte_alphabet();
        assert_eq!(a[b'!' as usize], '!');
        assert_eq!(a[b' ' as usize], 'Ġ'); // U+0120: space is the 33rd non-printable byte
        assert_eq!(a[b'\n' as usize], 'Ċ'); // U+010A
        assert_eq!(a[0], 'Ā');
        assert_eq!(a[173], 'Ń'); // soft hyphen, the last remapped byte: U+0143
        let mut sorted = a.to_vec();
        sorted.sort();
        sorted.dedup();
        assert_eq!(sorted.len(), 256);
    }

    #[test]
    fn tokenizer_encodes_like_gpt2_with_phi2s_added_tokens() {
        let dir = tempfile::tempdir().unwrap();
        write_tokenizer(dir.path()).unwrap();
        let merges = std::fs::read_to_string(dir.path().join("merges.txt")).unwrap();
        let lines: Vec<&str> = merges.lines().collect();
        assert_eq!(lines.len(), 50001);
        // GPT-2's merges.txt begins "#version: 0.2", "Ġ t", "Ġ a".
        assert_eq!(&lines[..3], ["#version: 0.2", "Ġ t", "Ġ a"]);
        let tok = tokenizers::Tokenizer::from_file(dir.path().join("tokenizer.json")).unwrap();
        assert_eq!(tok.get_vocab_size(true), 50295);
        assert_eq!(tok.token_to_id(ENDOFTEXT), Some(50256));
        let ids = |s: &str| tok.encode(s, false).unwrap().get_ids().to_vec();
        // GPT-2 ids: "Hello" 15496, " world" 995, "," 11, " the" 262, "!" 0.
        assert_eq!(ids("Hello world"), [15496, 995]);
        assert_eq!(ids("Hello, the world!"), [15496, 11, 262, 995, 0]);
        assert_eq!(ids("<|endoftext|>"), [50256]);
        // Phi-2's added whitespace: 4 spaces is 50284, 2 tabs is 50294.
        assert_eq!(ids("    "), [50284]);
        assert_eq!(ids("\t\t"), [50294]);
        let text = "def f(x):\n    return x  # ünïcode ✓";
        let decoded = tok.decode(&ids(text), false).unwrap();
        assert_eq!(decoded, text);
        let special: Value = serde_json::from_slice(
            &std::fs::read(dir.path().join("special_tokens_map.json")).unwrap(),
        )
        .unwrap();
        assert_eq!(special["eos_token"], ENDOFTEXT);
    }
}
