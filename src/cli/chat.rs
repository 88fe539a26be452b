//! `harness chat --run RUN --image IMG [--question Q]`: one answer, or a conversation read
//! from stdin (one question per line, one answer line each, until EOF).

use std::io::{BufRead, IsTerminal, Write};
use std::path::{Path, PathBuf};

use clap::Args;

use super::caption::{one_line, DecodeArgs};

#[derive(Args, Debug)]
pub struct ChatArgs {
    /// Run id, unique id prefix, or experiment name (its latest run).
    #[arg(long)]
    pub run: String,
    /// The image the conversation is about.
    #[arg(long)]
    pub image: PathBuf,
    /// Answer this one question and exit; without it, questions are read from stdin and
    /// each answer sees the conversation so far.
    #[arg(long)]
    pub question: Option<String>,
    #[command(flatten)]
    pub decode: DecodeArgs,
}

pub fn chat(results: &Path, a: ChatArgs) -> anyhow::Result<()> {
    let s = a.decode.session(results, &a.run)?;
    if s.stage < 2 {
        eprintln!(
            "note: run {} has no stage-2 weights; answering with the stage-1 model",
            s.run_id
        );
    }
    let mut chat = s.chat(&a.image)?;
    if let Some(q) = &a.question {
        println!("{}", one_line(&chat.ask(q)?));
        return Ok(());
    }
    let interactive = std::io::stdin().is_terminal();
    let stdout = std::io::stdout();
    let mut lines = std::io::stdin().lock().lines();
    loop {
        if interactive {
            eprint!("> ");
        }
        let Some(line) = lines.next() else { break };
        let q = line?;
        let q = q.trim();
        if q.is_empty() {
            continue;
        }
        let answer = chat.ask(q)?;
        let mut out = stdout.lock();
        writeln!(out, "{}", one_line(&answer))?;
        out.flush()?;
    }
    Ok(())
}
