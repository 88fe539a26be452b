//! MME as LLaVA feeds MME's eval tool: `playground/data/eval/MME/convert_answer_to_mme.py`
//! matches each answer to its ground-truth line, and MME's `eval_tool/calculation.py`
//! scores the subtasks.
//!
//! Ground truth: `MME_Benchmark_release_version/<subtask>/`, one `<image>.txt` per image
//! with one `question<TAB>Yes|No` line per question (two per image), in
//! `<subtask>/questions_answers_YN/` where that folder exists, else in `<subtask>/` beside
//! the images. Only MME's 14 subtasks are read (calculation.py's lists); other folders are
//! ignored.
//!
//! Matching (convert_answer_to_mme.py): the subtask is `question_id` up to the first `/`,
//! the file is its last `/` part up to the first `.` plus `.txt`; the question is the
//! prompt without "Answer the question using a single word or phrase." (then stripped),
//! with " Please answer yes or no." appended if it lacks that sentence, or, when that is
//! not a ground-truth question, "  Please answer yes or no." (two spaces: some MME files
//! have them). An answer that still matches nothing is extra (the script raises KeyError).
//!
//! Answer rule (calculation.py): lower case; "yes" if the first 4 characters contain
//! "yes", else "no" if they contain "no", else "other" (always wrong). So "Yes, there
//! is." is yes, "Not really" and "None" are no, "I think yes" is other, "eyes" is yes. The
//! tool reads a tab-separated line per answer, so an answer with a tab or a newline breaks
//! it; here such answers are scored on their text like any other.
//!
//! Metrics per subtask: `accuracy` (questions right), `accuracy_plus` (images with every
//! question right; the tool pairs consecutive lines, here questions are grouped by image,
//! the same for LLaVA's file, which keeps an image's two questions together) and `score` =
//! 100 * (accuracy + accuracy_plus); `perception` and `cognition` sum the scores of their
//! subtasks (of those with predictions; a subtask without any is named in the notes).
//! `accuracy_plus` counts only images with all their questions answered.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};

use super::answers::{Answer, Answers};
use super::matching::{index_unique, Coverage};
use super::pystr::{prefix, strip};
use super::{ratio, BenchScore, ItemScore, Metrics, Task};

/// calculation.py's subtasks of the perception score, in its order.
pub const PERCEPTION: [&str; 10] = [
    "existence",
    "count",
    "position",
    "color",
    "posters",
    "celebrity",
    "scene",
    "landmark",
    "artwork",
    "OCR",
];

/// calculation.py's subtasks of the cognition score, in its order.
pub const COGNITION: [&str; 4] = [
    "commonsense_reasoning",
    "numerical_calculation",
    "text_translation",
    "code_reasoning",
];

const SINGLE_WORD: &str = "Answer the question using a single word or phrase.";
const YES_NO: &str = "Please answer yes or no.";

/// One image's questions and whether each answer is "yes".
#[derive(Debug, Clone, PartialEq)]
pub struct MmeImage {
    /// The ground-truth file, `<image>.txt`.
    pub file: String,
    pub questions: Vec<(String, bool)>,
}

/// One subtask.
#[derive(Debug, Clone, PartialEq)]
pub struct MmeSubtask {
    pub name: String,
    pub perception: bool,
    pub images: Vec<MmeImage>,
}

/// MME's ground truth: the subtasks found, in calculation.py's order.
#[derive(Debug, Clone, PartialEq)]
pub struct MmeGt {
    pub dir: PathBuf,
    pub subtasks: Vec<MmeSubtask>,
}

/// calculation.py's reading of an answer: `Some(true)` yes, `Some(false)` no, `None` other.
pub fn parse_yes_no(text: &str) -> Option<bool> {
    let lower = text.to_lowercase();
    let head = prefix(&lower, 4);
    if head.contains("yes") {
        Some(true)
    } else if head.contains("no") {
        Some(false)
    } else {
        None
    }
}

impl MmeGt {
    /// Reads `MME_Benchmark_release_version/`.
    pub fn load(dir: &Path) -> Result<MmeGt> {
        if !dir.is_dir() {
            bail!(
                "{}: not a folder (expected MME_Benchmark_release_version/)",
                dir.display()
            );
        }
        let mut subtasks = Vec::new();
        let known = PERCEPTION
            .iter()
            .map(|s| (*s, true))
            .chain(COGNITION.iter().map(|s| (*s, false)));
        for (name, perception) in known {
            let sub = dir.join(name);
            if !sub.is_dir() {
                continue;
            }
            let yn = sub.join("questions_answers_YN");
            let qa = if yn.is_dir() { yn } else { sub };
            let mut files: Vec<PathBuf> = std::fs::read_dir(&qa)
                .with_context(|| format!("reading {}", qa.display()))?
                .filter_map(|e| e.ok().map(|e| e.path()))
                .filter(|p| p.extension().is_some_and(|x| x == "txt"))
                .collect();
            files.sort();
            let mut images = Vec::new();
            for f in files {
                let text = std::fs::read_to_string(&f)
                    .with_context(|| format!("reading {}", f.display()))?;
                let mut questions = Vec::new();
                for (i, line) in text.lines().enumerate() {
                    let line = strip(line);
                    if line.is_empty() {
                        continue;
                    }
                    let at = || format!("{} line {}", f.display(), i + 1);
                    let parts: Vec<&str> = line.split('\t').collect();
                    let [q, a] = parts[..] else {
                        bail!(
                            "{}: expected question<TAB>answer, got {} fields",
                            at(),
                            parts.len()
                        );
                    };
                    let yes = match a.to_lowercase().as_str() {
                        "yes" => true,
                        "no" => false,
                        _ => bail!("{}: answer {a:?}, expected Yes or No", at()),
                    };
                    questions.push((q.to_string(), yes));
                }
                let file = f
                    .file_name()
                    .map(|n| n.to_string_lossy().into_owned())
                    .unwrap_or_default();
                images.push(MmeImage { file, questions });
            }
            subtasks.push(MmeSubtask {
                name: name.to_string(),
                perception,
                images,
            });
        }
        if subtasks.is_empty() {
            bail!(
                "{}: none of MME's subtask folders ({}, {})",
                dir.display(),
                PERCEPTION.join(", "),
                COGNITION.join(", ")
            );
        }
        Ok(MmeGt {
            dir: dir.to_path_buf(),
            subtasks,
        })
    }
}

/// (subtask, file, question): the key of a ground-truth line.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct Key(String, String, String);

impl std::fmt::Display for Key {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{} {:?}", self.0, self.1, self.2)
    }
}

/// convert_answer_to_mme.py's key for an answer, given the ground-truth keys.
fn answer_key(a: &Answer, prompt: &str, gt: &HashMap<Key, bool>) -> Key {
    let qid = a.question_id.key();
    let subtask = qid.split('/').next().unwrap_or("").to_string();
    let last = qid.rsplit('/').next().unwrap_or("");
    let file = format!("{}.txt", last.split('.').next().unwrap_or(""));
    let mut q = prompt.to_string();
    if q.contains(SINGLE_WORD) {
        q = strip(&q.replace(SINGLE_WORD, "")).to_string();
    }
    if !q.contains(YES_NO) {
        q = format!("{q} {YES_NO}");
        if !gt.contains_key(&Key(subtask.clone(), file.clone(), q.clone())) {
            q = q.replace(&format!(" {YES_NO}"), &format!("  {YES_NO}"));
        }
    }
    Key(subtask, file, q)
}

/// Scores MME answers.
pub fn score(answers: &Answers, gt: &MmeGt) -> Result<BenchScore> {
    let mut truth: HashMap<Key, bool> = HashMap::new();
    for s in &gt.subtasks {
        for img in &s.images {
            for (q, yes) in &img.questions {
                truth.insert(Key(s.name.clone(), img.file.clone(), q.clone()), *yes);
            }
        }
    }
    let keyed = index_unique(answers, |a| {
        let prompt = answers.prompt(a, "MME finds the question in the prompt")?;
        Ok(Some(answer_key(a, prompt, &truth)))
    })?;
    let mut coverage = Coverage {
        gt_items: truth.len(),
        ..Coverage::default()
    };
    for k in keyed.keys.iter().flatten() {
        if !truth.contains_key(k) {
            coverage.extra.push(k);
        }
    }
    let mut metrics = Metrics::default();
    let mut per_subtask = Metrics::default();
    let mut items = Vec::new();
    let mut notes = Vec::new();
    let (mut perception, mut cognition) = (None::<f64>, None::<f64>);
    for s in &gt.subtasks {
        let (mut answered, mut right) = (0, 0);
        let (mut full_images, mut full_right) = (0, 0);
        for img in &s.images {
            let mut all_answered = true;
            let mut all_right = true;
            for (q, yes) in &img.questions {
                let key = Key(s.name.clone(), img.file.clone(), q.clone());
                let Some(a) = keyed.index.get(&key) else {
                    coverage.missing.push(&key);
                    all_answered = false;
                    continue;
                };
                let ok = parse_yes_no(&a.text) == Some(*yes);
                answered += 1;
                right += usize::from(ok);
                all_right &= ok;
                items.push(ItemScore {
                    id: format!("{} {:?}", a.question_id, q),
                    score: if ok { 1.0 } else { 0.0 },
                });
            }
            if all_answered && !img.questions.is_empty() {
                full_images += 1;
                full_right += usize::from(all_right);
            }
        }
        if answered == 0 {
            notes.push(format!("subtask {}: no predictions", s.name));
            continue;
        }
        let acc = ratio(right, answered);
        let acc_plus = if full_images > 0 {
            ratio(full_right, full_images)
        } else {
            notes.push(format!(
                "subtask {}: no image has all its questions answered; accuracy_plus is 0",
                s.name
            ));
            0.0
        };
        // calculation.py adds acc*100, then acc_plus*100, in that order.
        let score = acc * 100.0 + acc_plus * 100.0;
        per_subtask.push(format!("{}/accuracy", s.name), acc);
        per_subtask.push(format!("{}/accuracy_plus", s.name), acc_plus);
        per_subtask.push(format!("{}/score", s.name), score);
        let total = if s.perception {
            &mut perception
        } else {
            &mut cognition
        };
        *total = Some(total.unwrap_or(0.0) + score);
    }
    coverage.require_some(answers, &gt.dir.display().to_string())?;
    if let Some(p) = perception {
        metrics.push("perception", p);
    }
    if let Some(c) = cognition {
        metrics.push("cognition", c);
    }
    for (k, v) in per_subtask.iter() {
        metrics.push(k, v);
    }
    Ok(BenchScore {
        task: Task::Mme,
        n: items.len(),
        metrics,
        items,
        coverage,
        notes,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::eval::bench::QuestionId;

    #[test]
    fn yes_no_is_read_from_the_first_four_characters() {
        let cases = [
            ("Yes", Some(true)),
            ("yes", Some(true)),
            ("Yes, there is.", Some(true)),
            ("No, there is not.", Some(false)),
            ("No", Some(false)),
            ("Not really", Some(false)),
            ("None", Some(false)),
            ("Unknown", None), // "unkn"
            ("I think yes", None),
            ("eyes", Some(true)),
            ("NO.", Some(false)),
            ("The answer is B.", None),
            ("", None),
            (" no", Some(false)),
            ("  yes", None), // "  ye"
        ];
        for (text, want) in cases {
            assert_eq!(parse_yes_no(text), want, "{text:?}");
        }
    }

    fn write(p: &Path, text: &str) {
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(p, text).unwrap();
    }

    #[test]
    fn prompts_find_their_ground_truth_line_and_scores_add_up() {
        let d = tempfile::tempdir().unwrap();
        let root = d.path();
        // Flat layout (existence) and the questions_answers_YN layout (artwork, with the
        // two-space variant of the suffix).
        write(
            &root.join("existence/0001.txt"),
            "Is there a dog in this image? Please answer yes or no.\tYes\n\
             Is there a cat in this image? Please answer yes or no.\tNo\n",
        );
        write(
            &root.join("existence/0002.txt"),
            "Is there a car in this image? Please answer yes or no.\tYes\n\
             Is there a bus in this image? Please answer yes or no.\tNo\n",
        );
        write(
            &root.join("artwork/questions_answers_YN/10002.txt"),
            "Is this artwork by Monet?  Please answer yes or no.\tNo\n\
             Is this artwork by Manet?  Please answer yes or no.\tYes\n",
        );
        write(&root.join("unrelated/x.txt"), "not MME\n");
        let gt = MmeGt::load(root).unwrap();
        assert_eq!(gt.subtasks.len(), 2);
        let sw = "\nAnswer the question using a single word or phrase.";
        let a = |id: &str, q: &str, t: &str| {
            (
                QuestionId::Str(id.into()),
                Some(format!("{q}{sw}")),
                t.to_string(),
            )
        };
        let answers = Answers::from_items(
            "a.jsonl",
            vec![
                a("existence/0001.png", "Is there a dog in this image?", "Yes"),
                a("existence/0001.png", "Is there a cat in this image?", "No"),
                a("existence/0002.png", "Is there a car in this image?", "Yes"),
                a("existence/0002.png", "Is there a bus in this image?", "Yes"),
                a(
                    "artwork/10002.jpg",
                    "Is this artwork by Monet?",
                    "No, it is not.",
                ),
                a(
                    "artwork/10002.jpg",
                    "Is this artwork by Manet?",
                    "I think so",
                ),
                a("count/0001.png", "How many?", "2"),
            ],
        );
        let s = score(&answers, &gt).unwrap();
        assert_eq!(s.n, 6);
        let m = &s.metrics;
        // existence: 3 of 4 right, 1 of 2 images fully right: 75 + 50.
        assert_eq!(m.get("existence/accuracy"), Some(0.75));
        assert_eq!(m.get("existence/accuracy_plus"), Some(0.5));
        assert_eq!(m.get("existence/score"), Some(125.0));
        // artwork: 1 of 2 ("I think so" is other), no image fully right: 50 + 0.
        assert_eq!(m.get("artwork/score"), Some(50.0));
        assert_eq!(m.get("perception"), Some(175.0));
        assert_eq!(m.get("cognition"), None);
        assert_eq!(s.coverage.extra.count, 1);
        assert!(
            s.coverage.extra.first[0].starts_with("count/0001.txt"),
            "{:?}",
            s.coverage
        );
    }
}
