//! Padded burn batches and the epoch's batch order.

use harness::backend::Compute;
use harness::data::batch::{epoch_batches, BatchItem, LlavaBatcher, Targets};
use harness::data::sequence::{Sequence, IGNORE};

fn seq(id: &str, len: usize, image_start: Option<usize>) -> Sequence {
    Sequence {
        id: id.into(),
        input_ids: (0..len as u32).map(|i| 10 + i).collect(),
        labels: (0..len as i64)
            .map(|i| if i % 2 == 0 { IGNORE } else { 10 + i })
            .collect(),
        image_start,
        image_tokens: if image_start.is_some() { 2 } else { 0 },
        truncated: 0,
        image: None,
    }
}

#[test]
fn batches_are_right_padded_with_masks_and_features() {
    let device = Default::default();
    let b = LlavaBatcher {
        pad_id: 7,
        image_tokens: 2,
        feature_dim: 3,
        pad_to_multiple: 4,
    };
    let items = vec![
        BatchItem {
            seq: seq("a", 5, Some(1)),
            features: Some((0..6).map(|x| x as f32).collect()),
        },
        BatchItem {
            seq: seq("b", 2, None),
            features: None,
        },
    ];
    let out = b.batch::<Compute>(items, &device);
    assert_eq!(out.input_ids.dims(), [2, 8]);
    let ids: Vec<i64> = out.input_ids.to_data().convert::<i64>().to_vec().unwrap();
    assert_eq!(ids, [10, 11, 12, 13, 14, 7, 7, 7, 10, 11, 7, 7, 7, 7, 7, 7]);
    let labels: Vec<i64> = out.labels.to_data().convert::<i64>().to_vec().unwrap();
    let m = IGNORE;
    assert_eq!(labels, [m, 11, m, 13, m, m, m, m, m, 11, m, m, m, m, m, m]);
    let mask: Vec<i64> = out
        .attention_mask
        .to_data()
        .convert::<i64>()
        .to_vec()
        .unwrap();
    assert_eq!(mask, [1, 1, 1, 1, 1, 0, 0, 0, 1, 1, 0, 0, 0, 0, 0, 0]);
    assert_eq!(out.image_features.dims(), [2, 2, 3]);
    let f: Vec<f32> = out.image_features.to_data().to_vec().unwrap();
    assert_eq!(f, [0., 1., 2., 3., 4., 5., 0., 0., 0., 0., 0., 0.]);
    assert_eq!(out.image_start, [Some(1), None]);
    assert_eq!(out.lengths, [5, 2]);
    // The loss's positions, from the host labels: the one that predicts each target.
    assert_eq!(out.target_tokens(), 3);
    assert_eq!(out.targets.positions, [0, 2, 8]);
    assert_eq!(out.targets.ids, [11, 13, 11]);
    assert_eq!(out.targets, Targets::of(&out.labels));
    assert_eq!(out.ids, ["a", "b"]);
}

fn lengths() -> Vec<usize> {
    let mut r = harness::rng::Rng::new(5);
    (0..1000).map(|_| 20 + r.below(400)).collect()
}

fn padded_tokens(lengths: &[usize], batches: &[Vec<usize>]) -> usize {
    batches
        .iter()
        .map(|b| b.len() * b.iter().map(|&i| lengths[i]).max().unwrap())
        .sum()
}

#[test]
fn epoch_batches_cover_everything_once_deterministically() {
    let l = lengths();
    for group in [false, true] {
        let b = epoch_batches(&l, 8, 3, 0, group, false);
        let mut all: Vec<usize> = b.iter().flatten().copied().collect();
        all.sort();
        assert_eq!(all, (0..l.len()).collect::<Vec<_>>());
        assert_eq!(b, epoch_batches(&l, 8, 3, 0, group, false));
        assert_ne!(b, epoch_batches(&l, 8, 3, 1, group, false));
        assert_ne!(b, epoch_batches(&l, 8, 4, 0, group, false));
    }
    let dropped = epoch_batches(&l[..1003.min(l.len()) - 5], 8, 3, 0, false, true);
    assert!(dropped.iter().all(|b| b.len() == 8));
}

#[test]
fn grouping_by_length_cuts_padding() {
    let l = lengths();
    let plain = padded_tokens(&l, &epoch_batches(&l, 16, 1, 0, false, false));
    let grouped = padded_tokens(&l, &epoch_batches(&l, 16, 1, 0, true, false));
    let real: usize = l.iter().sum();
    // Random lengths in 20..420: plain batches pad to near the max; grouped nearly none.
    assert!(grouped < plain, "{grouped} vs {plain}");
    assert!(
        (grouped - real) * 5 < plain - real,
        "{grouped} {plain} {real}"
    );
}
