//! Groups: the runs in the store that differ only in their seed, replicas of one
//! experiment. Their key is the config hash without name and seed
//! ([`crate::config::group_key`]) together with the code the runs were made with (commit
//! and diff hash): the same config on other code is another experiment. A group keeps one
//! run per seed (a run whose stages were all reused from another with the same seed is the
//! same measurement twice): the completed one, the latest started among equals.

use std::collections::BTreeMap;

use anyhow::Result;

use crate::store::{State, Store};

/// Replicas of one experiment.
#[derive(Debug, Clone, PartialEq)]
pub struct Group {
    pub key: String,
    /// The replicas' name without the `-s<seed>` suffix (the first's where they differ).
    pub name: String,
    /// One run per seed, in seed order.
    pub runs: Vec<String>,
    pub seeds: Vec<u64>,
}

struct Member {
    id: String,
    name: String,
    seed: u64,
    completed: bool,
    started: String,
}

/// Every group in the store, single runs included (a group of one), ordered by the
/// newest start among their runs, newest first.
pub fn groups(store: &Store) -> Result<Vec<Group>> {
    let mut by_key: BTreeMap<String, Vec<Member>> = BTreeMap::new();
    for id in store.run_ids()? {
        let Ok(exp) = store.read_experiment(&id) else {
            continue;
        };
        let Ok(status) = store.read_status(&id) else {
            continue;
        };
        let code = store
            .read_provenance(&id)
            .map(|p| p.code.id_suffix())
            .unwrap_or_else(|_| format!("unknown:{id}"));
        let key = format!("{}@{code}", crate::config::group_key(&exp));
        by_key.entry(key).or_default().push(Member {
            id,
            name: exp.name.clone(),
            seed: exp.seed,
            completed: store.effective_state(&status) == State::Completed,
            started: status.started,
        });
    }
    let mut out: Vec<(String, Group)> = by_key
        .into_iter()
        .map(|(key, mut members)| {
            // Per seed: completed first, then the latest started.
            members.sort_by(|a, b| {
                (a.seed, !a.completed, std::cmp::Reverse(&a.started)).cmp(&(
                    b.seed,
                    !b.completed,
                    std::cmp::Reverse(&b.started),
                ))
            });
            members.dedup_by(|b, a| a.seed == b.seed);
            let newest = members
                .iter()
                .map(|m| m.started.clone())
                .max()
                .unwrap_or_default();
            let bases: Vec<&str> = members
                .iter()
                .map(|m| crate::config::base_name(&m.name, m.seed))
                .collect();
            let group = Group {
                key,
                name: bases[0].to_string(),
                runs: members.iter().map(|m| m.id.clone()).collect(),
                seeds: members.iter().map(|m| m.seed).collect(),
            };
            (newest, group)
        })
        .collect();
    out.sort_by(|a, b| b.0.cmp(&a.0));
    Ok(out.into_iter().map(|(_, g)| g).collect())
}

/// The newest group of at least two seeds named `name`, if any.
pub fn find(store: &Store, name: &str) -> Result<Option<Group>> {
    Ok(groups(store)?
        .into_iter()
        .find(|g| g.name == name && g.runs.len() >= 2))
}
