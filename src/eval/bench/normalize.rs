//! VQA answer normalization and accuracy, as two reference texts define them:
//!
//! - [`vqa_accuracy`]: the official VQA evaluation (`vqaEval.py` of GT-Vision-Lab/VQA, the
//!   rule the VQAv2 server applies). Prediction and the 10 human answers are stripped of
//!   newlines, tabs and outer spaces; **only when the human answers are not all the same**
//!   are both punctuation-processed and digit/article-processed, so against ten identical
//!   answers "Two" or "two" does not match "2" (nor "Yes" "yes"). The score is the mean over
//!   the 10 leave-one-out subsets of `min(1, matches / 3)`.
//! - [`eval_ai_answer`]: `EvalAIAnswerProcessor` of LLaVA's `m4c_evaluator.py` (from MMF),
//!   applied to every answer: lower case, `,` and `?` removed, `'s` split off, then the same
//!   punctuation and digit/article steps. TextVQA scores with it on both sides
//!   ([`soft_accuracy`] over processed answers); LLaVA runs VQAv2 predictions through it
//!   before submission (`convert_vqav2_for_submission.py`).
//!
//! Quirks kept on purpose, since the references have them:
//! - punctuation in [`PUNCT`] is deleted when it touches a space anywhere in the text (or the
//!   text has a digit-comma-digit), and replaced by a space otherwise (`"coca-cola"` ->
//!   `"coca cola"`, `"coca- cola"` -> `"coca cola"` with one space after the split);
//! - a period is deleted unless a digit follows (`"3.5"` stays), at most 32 of them: the
//!   references pass `re.UNICODE` (= 32) where `re.sub` takes its `count`;
//! - number words zero..ten (and "none") become digits, "a"/"an"/"the" are dropped, then the
//!   contractions table restores apostrophes ("dont" -> "don't"); its entries with capitals
//!   never match (the text is lower case by then), as in the references;
//! - the two texts differ only in the digit-comma-digit test: `(\d)(\,)(\d)` in vqaEval,
//!   `(?<=\d)(\,)+(?=\d)` in m4c (which has already deleted every comma, so it never fires).
//!
//! Python 3 semantics throughout ([`super::pystr`]): `\d` is any Unicode decimal digit.
//! vqaEval.py itself is Python 2 code, where `\d` is ASCII only; the two differ only for
//! non-ASCII digits.

use std::collections::HashSet;

use super::pystr::{is_digit, split, strip};

/// Characters the punctuation step deletes or turns into spaces, in the references' order.
pub const PUNCT: [char; 21] = [
    ';', '/', '[', ']', '"', '{', '}', '(', ')', '=', '+', '\\', '_', '-', '>', '<', '@', '`', ',',
    '?', '!',
];

/// Number words mapped to digits.
const NUMBERS: [(&str, &str); 12] = [
    ("none", "0"),
    ("zero", "0"),
    ("one", "1"),
    ("two", "2"),
    ("three", "3"),
    ("four", "4"),
    ("five", "5"),
    ("six", "6"),
    ("seven", "7"),
    ("eight", "8"),
    ("nine", "9"),
    ("ten", "10"),
];

const ARTICLES: [&str; 3] = ["a", "an", "the"];

/// The `count` the references pass to `re.sub` by mistake (`re.UNICODE`).
const PERIODS_REMOVED_AT_MOST: usize = 32;

/// Which digit-comma-digit test the punctuation step uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CommaRule {
    /// vqaEval: a digit, one comma, a digit.
    One,
    /// m4c: a digit, one or more commas, a digit.
    Run,
}

/// Whether `s` has a digit, a comma (or a run of them, with [`CommaRule::Run`]), a digit.
fn digit_comma_digit(s: &str, rule: CommaRule) -> bool {
    let cs: Vec<char> = s.chars().collect();
    (0..cs.len()).any(|i| {
        if !is_digit(cs[i]) {
            return false;
        }
        let mut j = i + 1;
        while j < cs.len() && cs[j] == ',' {
            j += 1;
            if rule == CommaRule::One {
                break;
            }
        }
        j > i + 1 && j < cs.len() && is_digit(cs[j])
    })
}

/// The punctuation step (`processPunctuation` / `process_punctuation`).
pub fn process_punctuation(text: &str, rule: CommaRule) -> String {
    let comma = digit_comma_digit(text, rule);
    let mut out = text.to_string();
    for p in PUNCT {
        // The test looks at the input text, the replacement works on the output so far.
        let touches_space = text.contains(&format!("{p} ")) || text.contains(&format!(" {p}"));
        out = out.replace(p, if touches_space || comma { "" } else { " " });
    }
    strip_periods(&out)
}

/// Deletes each period not followed by a digit, the first 32 at most.
fn strip_periods(s: &str) -> String {
    let cs: Vec<char> = s.chars().collect();
    let mut removed = 0;
    let mut out = String::with_capacity(s.len());
    for (i, &c) in cs.iter().enumerate() {
        let digit_next = cs.get(i + 1).is_some_and(|&n| is_digit(n));
        if c == '.' && !digit_next && removed < PERIODS_REMOVED_AT_MOST {
            removed += 1;
            continue;
        }
        out.push(c);
    }
    out
}

/// The digit/article step (`processDigitArticle` / `process_digit_article`): lower case,
/// split on whitespace, number words to digits, articles dropped, contractions restored.
pub fn process_digit_article(text: &str) -> String {
    let lower = text.to_lowercase();
    let words: Vec<&str> = split(&lower)
        .map(|w| {
            NUMBERS
                .iter()
                .find(|(k, _)| *k == w)
                .map_or(w, |(_, digit)| *digit)
        })
        .filter(|w| !ARTICLES.contains(w))
        .map(
            |w| match CONTRACTIONS.binary_search_by(|(k, _)| (*k).cmp(w)) {
                Ok(i) => CONTRACTIONS[i].1,
                Err(_) => w,
            },
        )
        .collect();
    words.join(" ")
}

/// LLaVA's `EvalAIAnswerProcessor()(answer)`.
pub fn eval_ai_answer(answer: &str) -> String {
    let w = answer
        .to_lowercase()
        .replace([',', '?'], "")
        .replace("'s", " 's");
    let w = strip(&w).replace(['\n', '\t'], " ");
    let w = process_punctuation(strip(&w), CommaRule::Run);
    process_digit_article(&w)
}

/// Mean over the leave-one-out subsets of `min(1, matches / 3)`: for each human answer,
/// how many of the *other* answers equal the prediction.
pub fn soft_accuracy(pred: &str, answers: &[String]) -> f64 {
    let matching: Vec<bool> = answers.iter().map(|a| a == pred).collect();
    let total = matching.iter().filter(|&&m| m).count();
    let sum: f64 = matching
        .iter()
        .map(|&m| {
            let others = total - usize::from(m);
            if others >= 3 {
                1.0
            } else {
                others as f64 / 3.0
            }
        })
        .sum();
    sum / answers.len() as f64
}

/// The official VQA accuracy of one prediction against its human answers (`vqaEval.py`).
pub fn vqa_accuracy(pred: &str, answers: &[String]) -> f64 {
    let clean = |s: &str| strip(&s.replace(['\n', '\t'], " ")).to_string();
    let mut gts: Vec<String> = answers.iter().map(|a| clean(a)).collect();
    let mut res = clean(pred);
    if gts.iter().collect::<HashSet<_>>().len() > 1 {
        let process = |s: &str| process_digit_article(&process_punctuation(s, CommaRule::One));
        gts = gts.iter().map(|a| process(a)).collect();
        res = process(&res);
    }
    soft_accuracy(&res, &gts)
}

/// Contractions without apostrophes and their spelling, sorted for binary search (the
/// references' table, quirks included: `somebody'd` -> `somebodyd`).
const CONTRACTIONS: &[(&str, &str)] = &[
    ("'ow'sat", "'ow's'at"),
    ("'ows'at", "'ow's'at"),
    ("I'dve", "I'd've"),
    ("Id've", "I'd've"),
    ("Im", "I'm"),
    ("Ive", "I've"),
    ("aint", "ain't"),
    ("arent", "aren't"),
    ("cant", "can't"),
    ("couldn'tve", "couldn't've"),
    ("couldnt", "couldn't"),
    ("couldnt've", "couldn't've"),
    ("couldve", "could've"),
    ("didnt", "didn't"),
    ("doesnt", "doesn't"),
    ("dont", "don't"),
    ("hadn'tve", "hadn't've"),
    ("hadnt", "hadn't"),
    ("hadnt've", "hadn't've"),
    ("hasnt", "hasn't"),
    ("havent", "haven't"),
    ("he'dve", "he'd've"),
    ("hed", "he'd"),
    ("hed've", "he'd've"),
    ("hes", "he's"),
    ("howd", "how'd"),
    ("howll", "how'll"),
    ("hows", "how's"),
    ("isnt", "isn't"),
    ("it'dve", "it'd've"),
    ("itd", "it'd"),
    ("itd've", "it'd've"),
    ("itll", "it'll"),
    ("let's", "let's"),
    ("maam", "ma'am"),
    ("mightn'tve", "mightn't've"),
    ("mightnt", "mightn't"),
    ("mightnt've", "mightn't've"),
    ("mightve", "might've"),
    ("mustnt", "mustn't"),
    ("mustve", "must've"),
    ("neednt", "needn't"),
    ("notve", "not've"),
    ("oclock", "o'clock"),
    ("oughtnt", "oughtn't"),
    ("ow's'at", "'ow's'at"),
    ("shant", "shan't"),
    ("she'dve", "she'd've"),
    ("she's", "she's"),
    ("shed've", "she'd've"),
    ("shouldn'tve", "shouldn't've"),
    ("shouldnt", "shouldn't"),
    ("shouldnt've", "shouldn't've"),
    ("shouldve", "should've"),
    ("somebody'd", "somebodyd"),
    ("somebody'dve", "somebody'd've"),
    ("somebodyd've", "somebody'd've"),
    ("somebodyll", "somebody'll"),
    ("somebodys", "somebody's"),
    ("someone'dve", "someone'd've"),
    ("someoned", "someone'd"),
    ("someoned've", "someone'd've"),
    ("someonell", "someone'll"),
    ("someones", "someone's"),
    ("something'dve", "something'd've"),
    ("somethingd", "something'd"),
    ("somethingd've", "something'd've"),
    ("somethingll", "something'll"),
    ("thats", "that's"),
    ("there'dve", "there'd've"),
    ("thered", "there'd"),
    ("thered've", "there'd've"),
    ("therere", "there're"),
    ("theres", "there's"),
    ("they'dve", "they'd've"),
    ("theyd", "they'd"),
    ("theyd've", "they'd've"),
    ("theyll", "they'll"),
    ("theyre", "they're"),
    ("theyve", "they've"),
    ("twas", "'twas"),
    ("wasnt", "wasn't"),
    ("we'dve", "we'd've"),
    ("wed've", "we'd've"),
    ("werent", "weren't"),
    ("weve", "we've"),
    ("whatll", "what'll"),
    ("whatre", "what're"),
    ("whats", "what's"),
    ("whatve", "what've"),
    ("whens", "when's"),
    ("whered", "where'd"),
    ("wheres", "where's"),
    ("whereve", "where've"),
    ("who'dve", "who'd've"),
    ("whod", "who'd"),
    ("whod've", "who'd've"),
    ("wholl", "who'll"),
    ("whos", "who's"),
    ("whove", "who've"),
    ("whyll", "why'll"),
    ("whyre", "why're"),
    ("whys", "why's"),
    ("wont", "won't"),
    ("wouldn'tve", "wouldn't've"),
    ("wouldnt", "wouldn't"),
    ("wouldnt've", "wouldn't've"),
    ("wouldve", "would've"),
    ("y'all'dve", "y'all'd've"),
    ("y'alld've", "y'all'd've"),
    ("y'allll", "y'all'll"),
    ("yall", "y'all"),
    ("yall'd've", "y'all'd've"),
    ("yall'll", "y'all'll"),
    ("you'dve", "you'd've"),
    ("youd", "you'd"),
    ("youd've", "you'd've"),
    ("youll", "you'll"),
    ("youre", "you're"),
    ("youve", "you've"),
];

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn eval_ai_processor_on_quirk_answers() {
        // Worked out by hand from m4c_evaluator.py's steps.
        let cases = [
            ("Yes, there is.", "yes there is"),
            ("No, there is not.", "no there is not"),
            ("Two", "2"),
            ("two", "2"),
            ("the Coca-Cola", "coca cola"),
            ("1,000", "1000"),
            ("3.5", "3.5"),
            ("dont", "don't"),
            ("It is a cat.", "it is cat"),
            ("The answer is B.", "answer is b"),
            ("B", "b"),
            ("(B)", "b"),
            ("None", "0"),
            ("an apple", "apple"),
            ("  Hello\tWorld!\n", "hello world"),
            ("it's red", "it 's red"),
            ("10:30", "10:30"),
            ("e-mail - free", "email free"), // "- " present: every '-' is deleted
            ("...", ""),
        ];
        for (raw, want) in cases {
            assert_eq!(eval_ai_answer(raw), want, "{raw:?}");
        }
    }

    #[test]
    fn official_punctuation_step_keeps_its_two_regexes_apart() {
        // A digit-comma-digit anywhere makes every punctuation mark vanish.
        assert_eq!(
            process_punctuation("1,000 (dogs)", CommaRule::One),
            "1000 dogs"
        );
        // " (" touches a space: "(" is deleted; ")" and "," become spaces.
        assert_eq!(
            process_punctuation("a,b (dogs)", CommaRule::One),
            "a b dogs "
        );
        // "1,,2": one comma only for vqaEval, a run for m4c.
        assert_eq!(process_punctuation("1,,2 x-y", CommaRule::One), "1  2 x y");
        assert_eq!(process_punctuation("1,,2 x-y", CommaRule::Run), "12 xy");
        // Non-ASCII digits count as digits for Python 3's \d.
        assert_eq!(
            process_punctuation("\u{663}.5", CommaRule::One),
            "\u{663}.5"
        );
    }

    #[test]
    fn at_most_32_periods_go() {
        let s = ".".repeat(40);
        assert_eq!(strip_periods(&s), "........");
        assert_eq!(strip_periods("a.b 3.5 end."), "ab 3.5 end");
        // Lookahead on the original text: the first of "..5" goes, the second stays.
        assert_eq!(strip_periods("..5"), ".5");
    }

    #[test]
    fn digits_articles_contractions() {
        assert_eq!(process_digit_article("The Three Dogs"), "3 dogs");
        assert_eq!(process_digit_article("a  an the"), "");
        assert_eq!(process_digit_article("Im here"), "im here"); // "Im" never matches
        assert_eq!(process_digit_article("somebody'd"), "somebodyd"); // the tables' quirk
        assert_eq!(process_digit_article("youre ten"), "you're 10");
    }

    #[test]
    fn soft_accuracy_counts_the_other_nine() {
        let mut a = vec!["coke".to_string(); 10];
        assert_eq!(soft_accuracy("coke", &a), 1.0);
        assert_eq!(soft_accuracy("pepsi", &a), 0.0);
        a[0] = "pepsi".into();
        // One human said pepsi: for that subset 0 others match, for the 9 others 1 does.
        assert!((soft_accuracy("pepsi", &a) - 0.3).abs() < 1e-15);
        a[1] = "pepsi".into();
        a[2] = "pepsi".into();
        // Three said it: 3 x 2/3 + 7 x 1, over 10.
        assert!((soft_accuracy("pepsi", &a) - 0.9).abs() < 1e-15);
    }

    #[test]
    fn contractions_table_is_sorted() {
        assert!(CONTRACTIONS.windows(2).all(|w| w[0].0 < w[1].0));
        assert_eq!(CONTRACTIONS.len(), 120);
    }
}
