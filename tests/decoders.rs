//! Every decoder that reads bytes from a peer, an operator or a file, against random bytes and
//! against damaged valid inputs: none may panic. The same entry points are fuzzed for many
//! millions of executions under `fuzz/` (`scripts/fuzz.sh`); this is the fast, stable check
//! that runs with every `cargo test`.

use proptest::prelude::*;
use tether::decoders::{seeds, ALL};

/// Damage to a valid input.
#[derive(Debug, Clone)]
enum Damage {
    Flip { at: usize, bit: u8 },
    Set { at: usize, byte: u8 },
    Insert { at: usize, bytes: Vec<u8> },
    Remove { at: usize, len: usize },
    Truncate { at: usize },
}

fn damage() -> impl Strategy<Value = Damage> {
    prop_oneof![
        (any::<usize>(), 0u8..8).prop_map(|(at, bit)| Damage::Flip { at, bit }),
        (any::<usize>(), any::<u8>()).prop_map(|(at, byte)| Damage::Set { at, byte }),
        (any::<usize>(), proptest::collection::vec(any::<u8>(), 1..8))
            .prop_map(|(at, bytes)| Damage::Insert { at, bytes }),
        (any::<usize>(), 1usize..16).prop_map(|(at, len)| Damage::Remove { at, len }),
        any::<usize>().prop_map(|at| Damage::Truncate { at }),
    ]
}

fn apply(mut input: Vec<u8>, damages: &[Damage]) -> Vec<u8> {
    for d in damages {
        let n = input.len().max(1);
        match d {
            Damage::Flip { at, bit } => {
                if let Some(b) = input.get_mut(at % n) {
                    *b ^= 1 << bit;
                }
            }
            Damage::Set { at, byte } => {
                if let Some(b) = input.get_mut(at % n) {
                    *b = *byte;
                }
            }
            Damage::Insert { at, bytes } => {
                let at = at % (input.len() + 1);
                input.splice(at..at, bytes.iter().copied());
            }
            Damage::Remove { at, len } => {
                let at = at % n;
                let end = (at + len).min(input.len());
                if at < end {
                    input.drain(at..end);
                }
            }
            Damage::Truncate { at } => input.truncate(at % n),
        }
    }
    input
}

/// The seeds of every decoder, in the order of [`ALL`], made once.
fn all_seeds() -> &'static [Vec<Vec<u8>>] {
    static SEEDS: std::sync::OnceLock<Vec<Vec<Vec<u8>>>> = std::sync::OnceLock::new();
    SEEDS.get_or_init(|| ALL.iter().map(|(name, _)| seeds(name)).collect())
}

#[test]
fn valid_inputs_decode() {
    for (name, decode) in ALL {
        for (i, seed) in seeds(name).iter().enumerate() {
            assert!(decode(seed), "{name}: seed {i} does not decode");
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 2_000, ..ProptestConfig::default() })]

    #[test]
    fn random_bytes_never_panic(which in 0..ALL.len(), bytes in proptest::collection::vec(any::<u8>(), 0..600)) {
        let (_, decode) = ALL[which];
        decode(&bytes);
    }

    #[test]
    fn damaged_valid_inputs_never_panic(which in 0..ALL.len(), pick in any::<usize>(), damages in proptest::collection::vec(damage(), 1..6)) {
        let (_, decode) = ALL[which];
        let seeds = &all_seeds()[which];
        let input = apply(seeds[pick % seeds.len()].clone(), &damages);
        decode(&input);
    }
}

/// Writes the seeds where `scripts/fuzz.sh` starts its corpora:
/// `TETHER_FUZZ_CORPUS=fuzz/corpus cargo test --test decoders write_fuzz_seeds -- --ignored`.
#[test]
#[ignore = "run by scripts/fuzz.sh"]
fn write_fuzz_seeds() {
    let root = std::path::PathBuf::from(
        std::env::var("TETHER_FUZZ_CORPUS").expect("TETHER_FUZZ_CORPUS names the corpus root"),
    );
    for (name, _) in ALL {
        let dir = root.join(name);
        std::fs::create_dir_all(&dir).unwrap();
        for (i, seed) in seeds(name).iter().enumerate() {
            std::fs::write(dir.join(format!("seed-{i}")), seed).unwrap();
        }
    }
}
