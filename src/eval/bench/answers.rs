//! Predictions in LLaVA's answers format: JSON Lines, one
//! `{"question_id", "prompt", "text", "answer_id", "model_id", "metadata"}` object per line,
//! as `llava/eval/model_vqa_loader.py` writes them. Only `question_id` and `text` are
//! required; `prompt` is read where a scorer needs it (TextVQA and MME find the question in
//! it, ScienceQA's `img_accuracy` looks for `<image>` in it). Blank lines are skipped. Errors
//! name the file and the line.
//!
//! `question_id` is an integer in some benchmarks (POPE, VQAv2) and a string in others
//! (TextVQA, GQA, ScienceQA, MME); it is kept as given. Ids are matched against the ground
//! truth by their text, so `4` and `"4"` are the same question.

use std::fmt;
use std::path::Path;

use anyhow::{bail, Context, Result};
use serde_json::Value;

/// A question id as the answers (or ground-truth) file gives it.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum QuestionId {
    Int(i64),
    Str(String),
}

impl QuestionId {
    /// The text the id is matched by (`4` and `"4"` both give `4`).
    pub fn key(&self) -> String {
        match self {
            QuestionId::Int(i) => i.to_string(),
            QuestionId::Str(s) => s.clone(),
        }
    }

    /// An id from a JSON value: an integer or a string, anything else is `None`.
    pub fn from_json(v: &Value) -> Option<QuestionId> {
        match v {
            Value::String(s) => Some(QuestionId::Str(s.clone())),
            Value::Number(n) => n.as_i64().map(QuestionId::Int),
            _ => None,
        }
    }

    /// The id as a JSON value, as it was given.
    pub fn to_json(&self) -> Value {
        match self {
            QuestionId::Int(i) => Value::from(*i),
            QuestionId::Str(s) => Value::from(s.as_str()),
        }
    }
}

/// JSON form: `4` or `"4"`.
impl fmt::Display for QuestionId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            QuestionId::Int(i) => write!(f, "{i}"),
            QuestionId::Str(s) => write!(f, "{}", Value::from(s.as_str())),
        }
    }
}

/// One prediction.
#[derive(Debug, Clone, PartialEq)]
pub struct Answer {
    pub question_id: QuestionId,
    /// The prompt the model was given, when the file records it.
    pub prompt: Option<String>,
    /// The model's answer.
    pub text: String,
    /// 1-based line in the source (for generated answers: the position).
    pub line: usize,
}

/// The predictions of one benchmark run and where they came from (for error messages).
#[derive(Debug, Clone, PartialEq)]
pub struct Answers {
    /// The file, or a label such as `generated`.
    pub source: String,
    pub items: Vec<Answer>,
}

impl Answers {
    /// Reads an answers file.
    pub fn read(path: &Path) -> Result<Answers> {
        let text =
            std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
        Answers::parse(&path.display().to_string(), &text)
    }

    /// Parses answers JSON Lines; `source` names them in errors.
    pub fn parse(source: &str, text: &str) -> Result<Answers> {
        let mut items = Vec::new();
        for (i, line) in text.lines().enumerate() {
            if line.trim().is_empty() {
                continue;
            }
            let at = || format!("{source} line {}", i + 1);
            let v: Value =
                serde_json::from_str(line).with_context(|| format!("{}: not valid JSON", at()))?;
            if !v.is_object() {
                bail!("{}: expected a JSON object, got {line}", at());
            }
            let question_id = match v.get("question_id") {
                None => bail!("{}: no \"question_id\"", at()),
                Some(q) => QuestionId::from_json(q).with_context(|| {
                    format!(
                        "{}: \"question_id\" must be an integer or a string, got {q}",
                        at()
                    )
                })?,
            };
            let text = match v.get("text") {
                Some(Value::String(s)) => s.clone(),
                Some(other) => bail!("{}: \"text\" must be a string, got {other}", at()),
                None => bail!("{}: no \"text\" (the model's answer)", at()),
            };
            let prompt = match v.get("prompt") {
                None | Some(Value::Null) => None,
                Some(Value::String(s)) => Some(s.clone()),
                Some(other) => bail!("{}: \"prompt\" must be a string, got {other}", at()),
            };
            items.push(Answer {
                question_id,
                prompt,
                text,
                line: i + 1,
            });
        }
        Ok(Answers {
            source: source.to_string(),
            items,
        })
    }

    /// Answers made in memory (by generation); lines are positions from 1.
    pub fn from_items(source: &str, items: Vec<(QuestionId, Option<String>, String)>) -> Answers {
        let items = items
            .into_iter()
            .enumerate()
            .map(|(i, (question_id, prompt, text))| Answer {
                question_id,
                prompt,
                text,
                line: i + 1,
            })
            .collect();
        Answers {
            source: source.to_string(),
            items,
        }
    }

    /// `SOURCE line N` for an answer, for messages.
    pub fn at(&self, a: &Answer) -> String {
        format!("{} line {}", self.source, a.line)
    }

    /// The prompt of an answer, or an error saying why the scorer needs it.
    pub fn prompt<'a>(&self, a: &'a Answer, why: &str) -> Result<&'a str> {
        a.prompt.as_deref().with_context(|| {
            format!(
                "{} (question_id {}): no \"prompt\"; {why}",
                self.at(a),
                a.question_id
            )
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_llava_answer_lines_keeping_ids_as_given() {
        let text = r#"{"question_id": 1, "prompt": "Is there a dog?", "text": "No", "answer_id": "x", "model_id": "m", "metadata": {}}

{"question_id": "003a8ae2ef43b901", "text": "Dakota digital"}
"#;
        let a = Answers::parse("a.jsonl", text).unwrap();
        assert_eq!(a.items.len(), 2);
        assert_eq!(a.items[0].question_id, QuestionId::Int(1));
        assert_eq!(a.items[0].prompt.as_deref(), Some("Is there a dog?"));
        assert_eq!(a.items[0].text, "No");
        assert_eq!(a.items[0].line, 1);
        assert_eq!(
            a.items[1].question_id,
            QuestionId::Str("003a8ae2ef43b901".into())
        );
        assert_eq!(a.items[1].prompt, None);
        assert_eq!(a.items[1].line, 3);
        assert_eq!(QuestionId::Int(4).key(), QuestionId::Str("4".into()).key());
        assert_eq!(QuestionId::Str("4".into()).to_string(), "\"4\"");
    }

    #[test]
    fn bad_lines_name_file_and_line() {
        let cases = [
            ("{\"question_id\": 1}", "a.jsonl line 1: no \"text\""),
            ("{\"text\": \"x\"}", "a.jsonl line 1: no \"question_id\""),
            (
                "{\"question_id\": 1.5, \"text\": \"x\"}",
                "a.jsonl line 1: \"question_id\" must be an integer or a string",
            ),
            (
                "{\"question_id\": 1, \"text\": 3}",
                "a.jsonl line 1: \"text\" must be a string",
            ),
            ("\n{\"question_id\": 1, ", "a.jsonl line 2: not valid JSON"),
        ];
        for (text, want) in cases {
            let e = format!("{:#}", Answers::parse("a.jsonl", text).unwrap_err());
            assert!(e.starts_with(want), "{text:?}: {e}");
        }
    }
}
