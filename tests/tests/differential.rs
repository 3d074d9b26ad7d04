//! Differential test of the context ABI: proptest generates random sequences of create, switch
//! and destroy (with bad ids, bad entrypoints and bad pointers mixed in), the guest
//! `guests/diff/abi_ops.c` executes each sequence under `weft run`, and every line it prints
//! (each call's errno, and which context arrives after each switch) is checked against a plain
//! Rust model of the ABI rules below. Some runs set a small `--max-contexts`, so that the
//! limit's EAGAIN is part of the model too.

use std::fmt;

use proptest::prelude::*;
use weft_e2e::run_guest_with;

/// What an operation acts on, as the guest spells it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Ref {
    Main,
    /// The context made by the n-th successful create (1-based); never created if there is none.
    Slot(u8),
    /// An id that was never handed out; kind 0 aliases slot 1's id in its low 32 bits.
    Bogus(u8),
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Op {
    Create,
    CreateNullEntrypoint,
    CreateWrongType,
    CreateOutsideTable,
    CreateBadPointer,
    Switch(Ref),
    Destroy(Ref),
    /// The active context returns: from its entrypoint, or from main.
    Return,
}

impl fmt::Display for Ref {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Ref::Main => write!(f, "m"),
            Ref::Slot(n) => write!(f, "{n}"),
            Ref::Bogus(kind) => write!(f, "x{kind}"),
        }
    }
}

impl fmt::Display for Op {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Op::Create => write!(f, "c"),
            Op::CreateNullEntrypoint => write!(f, "cn"),
            Op::CreateWrongType => write!(f, "cw"),
            Op::CreateOutsideTable => write!(f, "co"),
            Op::CreateBadPointer => write!(f, "cf"),
            Op::Switch(target) => write!(f, "s{target}"),
            Op::Destroy(target) => write!(f, "d{target}"),
            Op::Return => write!(f, "r"),
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum State {
    Active,
    Suspended { started: bool },
    Deleted,
}

const SUCCESS: &str = "SUCCESS";
const EAGAIN: &str = "EAGAIN";
const EFAULT: &str = "EFAULT";
const EINVAL: &str = "EINVAL";

/// The ABI rules, written as plainly as possible. Slot 0 is main.
struct Model {
    slots: Vec<State>,
    active: usize,
    /// Live (not deleted) contexts allowed besides main.
    max_contexts: usize,
    lines: Vec<String>,
}

/// What the guest should print, and how it should exit.
#[derive(Debug, PartialEq, Eq)]
struct Expected {
    stdout: String,
    exit_code: i32,
}

impl Model {
    fn run(ops: &[Op], max_contexts: usize) -> Expected {
        let mut model = Model {
            slots: vec![State::Active],
            active: 0,
            max_contexts,
            lines: Vec::new(),
        };
        for (n, op) in ops.iter().enumerate() {
            if let Some(exit_code) = model.step(n, *op) {
                return model.finish(exit_code);
            }
        }
        let active = model.active;
        model.lines.push(format!("end in {active}"));
        model.finish(0)
    }

    fn finish(self, exit_code: i32) -> Expected {
        let mut stdout = self.lines.join("\n");
        stdout.push('\n');
        Expected { stdout, exit_code }
    }

    /// The slot a reference names, or None for an id that was never handed out.
    fn resolve(&self, target: Ref) -> Option<usize> {
        match target {
            Ref::Main => Some(0),
            Ref::Slot(n) => (usize::from(n) < self.slots.len()).then_some(usize::from(n)),
            Ref::Bogus(_) => None,
        }
    }

    /// Applies one operation; returns the exit code when the program ends here.
    fn step(&mut self, n: usize, op: Op) -> Option<i32> {
        // Bad arguments are reported before the limit of live contexts.
        let result = match op {
            Op::Create => {
                let live = self.slots[1..]
                    .iter()
                    .filter(|state| **state != State::Deleted)
                    .count();
                if live >= self.max_contexts {
                    EAGAIN.to_string()
                } else {
                    self.slots.push(State::Suspended { started: false });
                    format!("{SUCCESS} slot {}", self.slots.len() - 1)
                }
            }
            Op::CreateNullEntrypoint | Op::CreateWrongType | Op::CreateOutsideTable => {
                EINVAL.to_string()
            }
            Op::CreateBadPointer => EFAULT.to_string(),
            Op::Destroy(target) => match self.resolve(target) {
                // Deleted is the same as never created: destroying it again is a no-op.
                None => SUCCESS.to_string(),
                Some(0) => EINVAL.to_string(),
                Some(slot) if slot == self.active => EINVAL.to_string(),
                Some(slot) => {
                    self.slots[slot] = State::Deleted;
                    SUCCESS.to_string()
                }
            },
            Op::Switch(target) => match self.resolve(target) {
                None => EINVAL.to_string(),
                Some(slot) if slot == self.active => SUCCESS.to_string(),
                Some(slot) => match self.slots[slot] {
                    State::Deleted => EINVAL.to_string(),
                    State::Active => unreachable!("only one context is active"),
                    State::Suspended { started } => {
                        self.slots[self.active] = State::Suspended { started: true };
                        self.slots[slot] = State::Active;
                        self.active = slot;
                        // The arriving context reports; a resumed one with the result of its
                        // own earlier switch, which succeeded since it was suspended by it.
                        let how = if started {
                            format!("resume {SUCCESS}")
                        } else {
                            "start".to_string()
                        };
                        self.lines.push(format!("{n} {op} -> enter {slot} {how}"));
                        return None;
                    }
                },
            },
            Op::Return => {
                self.lines.push(format!("{n} r -> {} returns", self.active));
                // main returning ends the program normally; an entrypoint returning is 129.
                return Some(if self.active == 0 { 0 } else { 129 });
            }
        };
        self.lines.push(format!("{n} {op} -> {result}"));
        None
    }
}

fn reference() -> impl Strategy<Value = Ref> {
    prop_oneof![
        2 => Just(Ref::Main),
        8 => (1u8..=6).prop_map(Ref::Slot),
        2 => (0u8..=3).prop_map(Ref::Bogus),
    ]
}

fn operation() -> impl Strategy<Value = Op> {
    prop_oneof![
        4 => Just(Op::Create),
        1 => Just(Op::CreateNullEntrypoint),
        1 => Just(Op::CreateWrongType),
        1 => Just(Op::CreateOutsideTable),
        1 => Just(Op::CreateBadPointer),
        8 => reference().prop_map(Op::Switch),
        4 => reference().prop_map(Op::Destroy),
    ]
}

/// A sequence of operations, ending now and then with the active context returning.
fn sequence() -> impl Strategy<Value = Vec<Op>> {
    (
        prop::collection::vec(operation(), 1..48),
        prop::bool::weighted(0.15),
    )
        .prop_map(|(mut ops, returns)| {
            if returns {
                ops.push(Op::Return);
            }
            ops
        })
}

/// weft's default limit, far above what a sequence creates.
const NO_LIMIT: usize = usize::MAX;

fn check_against_model(ops: &[Op], max_contexts: usize) -> Result<(), TestCaseError> {
    let args: Vec<String> = ops.iter().map(ToString::to_string).collect();
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let limit = max_contexts.to_string();
    let options: &[&str] = if max_contexts == NO_LIMIT {
        &[]
    } else {
        &["--max-contexts", &limit]
    };
    let outcome = run_guest_with(options, "abi_ops", &args);
    let expected = Model::run(ops, max_contexts);
    prop_assert_eq!(
        &outcome.stdout,
        &expected.stdout,
        "`{}` printed other results than the model\n{}",
        outcome.command,
        outcome.dump()
    );
    prop_assert_eq!(
        outcome.code(),
        expected.exit_code,
        "`{}` exited differently from the model\n{}",
        outcome.command,
        outcome.dump()
    );
    Ok(())
}

fn cases() -> u32 {
    std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|cases| cases.parse().ok())
        .unwrap_or(64)
}

proptest! {
    #![proptest_config(ProptestConfig { cases: cases(), ..ProptestConfig::default() })]

    #[test]
    fn random_operation_sequences_follow_the_abi_model(
        ops in sequence(),
        max_contexts in prop_oneof![3 => Just(NO_LIMIT), 1 => 1usize..=4],
    ) {
        check_against_model(&ops, max_contexts)?;
    }
}

fn parse(text: &str) -> Vec<Op> {
    let reference = |text: &str| match text {
        "m" => Ref::Main,
        bogus if bogus.starts_with('x') => Ref::Bogus(bogus[1..].parse().unwrap()),
        slot => Ref::Slot(slot.parse().unwrap()),
    };
    text.split_whitespace()
        .map(|op| match op {
            "c" => Op::Create,
            "cn" => Op::CreateNullEntrypoint,
            "cw" => Op::CreateWrongType,
            "co" => Op::CreateOutsideTable,
            "cf" => Op::CreateBadPointer,
            "r" => Op::Return,
            switch if switch.starts_with('s') => Op::Switch(reference(&switch[1..])),
            destroy if destroy.starts_with('d') => Op::Destroy(reference(&destroy[1..])),
            other => panic!("unknown operation {other}"),
        })
        .collect()
}

/// The model itself, on a sequence worked out by hand from the ABI doc.
#[test]
fn model_follows_the_abi_rules_on_a_hand_checked_sequence() {
    let ops = parse("c sm s1 s2 c s1 d1 dm d2 sm s1 s2 d1 s1 d1 sx0 cf cn c s3 d2 sm d3 s3 r");
    let expected = "\
0 c -> SUCCESS slot 1
1 sm -> SUCCESS
2 s1 -> enter 1 start
3 s2 -> EINVAL
4 c -> SUCCESS slot 2
5 s1 -> SUCCESS
6 d1 -> EINVAL
7 dm -> EINVAL
8 d2 -> SUCCESS
9 sm -> enter 0 resume SUCCESS
10 s1 -> enter 1 resume SUCCESS
11 s2 -> EINVAL
12 d1 -> EINVAL
13 s1 -> SUCCESS
14 d1 -> EINVAL
15 sx0 -> EINVAL
16 cf -> EFAULT
17 cn -> EINVAL
18 c -> SUCCESS slot 3
19 s3 -> enter 3 start
20 d2 -> SUCCESS
21 sm -> enter 0 resume SUCCESS
22 d3 -> SUCCESS
23 s3 -> EINVAL
24 r -> 0 returns
";
    assert_eq!(
        Model::run(&ops, NO_LIMIT),
        Expected {
            stdout: expected.to_string(),
            exit_code: 0
        }
    );
}

/// Hand-picked sequences through the real guest: each rule of the model at least once.
#[test]
fn hand_picked_sequences_follow_the_abi_model() {
    for (sequence, max_contexts) in [
        (
            "c sm s1 s2 c s1 d1 dm d2 sm s1 s2 d1 s1 d1 sx0 cf cn c s3 d2 sm d3 s3 r",
            NO_LIMIT,
        ),
        ("c c s1 s2 s1 s2 sm d1 d2 d1 s1 s2 sx1 dx2 dx3", NO_LIMIT),
        ("c s1 c s2 d1 r", NO_LIMIT),
        ("c s1 sx0 dx0 d5 s5 cw co", NO_LIMIT),
        // The limit counts the active context and frees a slot on destroy only.
        ("c c c s1 c d2 c c s3 d1 c", 2),
        // At the limit, bad arguments are still reported as such.
        ("c cf cn cw co c", 1),
    ] {
        check_against_model(&parse(sequence), max_contexts)
            .unwrap_or_else(|e| panic!("{sequence}: {e}"));
    }
}
