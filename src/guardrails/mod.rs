//! Guardrails: rules on the input (the request's messages) and on the output (the answer),
//! each with an action: `block`, `redact` or `flag`.
//!
//! Guardrail policies live in `policies/guardrails/*.toml` and a route names one with
//! `guardrails = "default"`. In: text; out: what fired and, for `redact`, the text with
//! every match masked. An input block answers 400 `guardrail_blocked` without calling the
//! upstream; an output block replaces the answer with that error (for a stream: a final
//! error event); redaction masks matches, across chunk boundaries for streams
//! (`stream::StreamRedactor`).

pub(crate) mod detect;
pub mod stream;

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Mutex;

use serde::{Deserialize, Serialize};

use crate::config::issue::{ConfigErrors, ConfigIssue, read_toml, struct_fields};
use detect::{Detector, Scanner};

/// What a redacted match becomes.
pub(crate) fn mask(kind: &str) -> String {
    format!("[redacted:{kind}]")
}

#[derive(
    Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize, utoipa::ToSchema,
)]
#[serde(rename_all = "lowercase")]
pub(crate) enum Action {
    Block,
    Redact,
    Flag,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub(crate) enum Stage {
    Input,
    Output,
}

#[derive(Debug, Clone, Deserialize)]
struct RuleFile {
    name: String,
    detect: String,
    action: Action,
    pattern: Option<String>,
    limit: Option<usize>,
    keywords: Option<Vec<String>>,
}

#[derive(Debug, Clone, Deserialize)]
struct PolicyFile {
    #[serde(default)]
    description: String,
    #[serde(default)]
    input: Vec<RuleFile>,
    #[serde(default)]
    output: Vec<RuleFile>,
}

#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Rule {
    pub(crate) name: String,
    pub(crate) detector: Detector,
    pub(crate) action: Action,
}

/// One stage's rules, compiled into one scanner.
pub struct StageRules {
    pub(crate) rules: Vec<Rule>,
    scanner: Scanner,
    /// [`StageRules::holdback_chars`], worked out once from the patterns.
    holdback: usize,
}

/// What the rules of a stage did to one text.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Applied {
    /// The first blocking rule that fired.
    pub blocked_by: Option<String>,
    /// Every rule that fired, with its action.
    pub(crate) fired: Vec<(String, Action)>,
    /// The text with redactions applied, when any `redact` rule fired.
    pub redacted: Option<String>,
}

impl StageRules {
    fn new(rules: Vec<Rule>) -> Result<Self, String> {
        let scanner = Scanner::new(rules.iter().map(|r| r.detector.clone()).collect())?;
        let holdback = rules
            .iter()
            .filter(|r| r.action != Action::Flag && !matches!(r.detector, Detector::MaxChars(_)))
            .map(|r| {
                r.detector
                    .longest_match()
                    .map_or(usize::MAX, |n| n.saturating_add(1))
            })
            .max()
            .unwrap_or(0);
        Ok(Self {
            rules,
            scanner,
            holdback,
        })
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.rules.is_empty()
    }

    /// Runs every rule over `text` in one pass.
    pub fn apply(&self, text: &str) -> Applied {
        let mut outcome = Applied::default();
        if self.rules.is_empty() {
            return outcome;
        }
        let mut spans: Vec<(usize, usize, &'static str)> = Vec::new();
        for hit in self.scanner.scan(text) {
            let rule = &self.rules[hit.rule];
            outcome.fired.push((rule.name.clone(), rule.action));
            match rule.action {
                Action::Block if outcome.blocked_by.is_none() => {
                    outcome.blocked_by = Some(rule.name.clone())
                }
                Action::Redact => spans.extend(
                    hit.spans
                        .iter()
                        .map(|(s, e)| (*s, *e, rule.detector.kind())),
                ),
                _ => {}
            }
        }
        if !spans.is_empty() {
            outcome.redacted = Some(redact(text, spans));
        }
        outcome
    }

    /// The pattern rules' matches in `text` from byte `start` on, as
    /// [`detect::Scanner::find_from`] finds them (what comes before `start` is context).
    pub(crate) fn hits_from(&self, text: &str, start: usize) -> Vec<detect::Hit> {
        self.scanner.find_from(text, start)
    }

    /// What a stream must hold back, in characters: the longest match of a rule that
    /// rewrites a stream (`block` or `redact` on a pattern), plus one character for the
    /// `\b` after it; 0 when no rule rewrites. `usize::MAX` (everything until the answer
    /// ends) for a pattern without a longest match, which the loader refuses on the output.
    pub(crate) fn holdback_chars(&self) -> usize {
        self.holdback
    }
}

/// Masks every e-mail address, phone number, payment card, IBAN and US SSN in `text`.
pub(crate) fn redact_pii(text: &str) -> String {
    static PII: std::sync::OnceLock<StageRules> = std::sync::OnceLock::new();
    let rules = PII.get_or_init(|| {
        let detectors = [
            Detector::Email,
            Detector::PaymentCard,
            Detector::Iban,
            Detector::UsSsn,
            Detector::Phone,
        ];
        let rules = detectors
            .into_iter()
            .map(|d| Rule {
                name: d.kind().to_owned(),
                detector: d,
                action: Action::Redact,
            })
            .collect();
        StageRules::new(rules).expect("built-in patterns compile")
    });
    rules
        .apply(text)
        .redacted
        .unwrap_or_else(|| text.to_owned())
}

/// Masks the spans (merging overlaps), left to right.
fn redact(text: &str, mut spans: Vec<(usize, usize, &'static str)>) -> String {
    spans.sort();
    let mut out = String::with_capacity(text.len());
    let mut at = 0;
    for (s, e, kind) in spans {
        if s < at {
            // Overlaps the previous mask: widen it.
            at = at.max(e);
            continue;
        }
        out.push_str(&text[at..s]);
        out.push_str(&mask(kind));
        at = e;
    }
    out.push_str(&text[at..]);
    out
}

impl std::fmt::Debug for StageRules {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_list()
            .entries(self.rules.iter().map(|r| &r.name))
            .finish()
    }
}

#[derive(Debug)]
/// A guardrail policy (one file of `policies/guardrails/`): its input rules, checked before the
/// upstream is called, and its output rules, checked on the answer.
pub struct GuardrailSet {
    pub(crate) name: String,
    #[expect(dead_code, reason = "read from the set's file, shown by nothing yet")]
    pub(crate) description: String,
    /// Rules over the request's text (messages, instructions, tool outputs).
    pub input: StageRules,
    /// Rules over the answer's text, whole or as it streams.
    pub output: StageRules,
}

/// Reads every `*.toml` in `dir`; a mistake names the file and the key (`output.2.pattern`).
///
/// # Errors
/// Every mistake of every file at once ([`ConfigErrors`]). A folder that is missing or cannot
/// be read is no error: it holds no sets.
pub fn load_dir(
    dir: &Path,
) -> Result<BTreeMap<String, std::sync::Arc<GuardrailSet>>, ConfigErrors> {
    let mut sets = BTreeMap::new();
    let mut issues = Vec::new();
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Ok(sets);
    };
    let mut paths: Vec<_> = entries
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "toml"))
        .collect();
    paths.sort();
    for path in paths {
        match load_file(&path) {
            Ok(set) => {
                sets.insert(set.name.clone(), std::sync::Arc::new(set));
            }
            Err(mut e) => issues.append(&mut e.0),
        }
    }
    if issues.is_empty() {
        Ok(sets)
    } else {
        Err(ConfigErrors(issues))
    }
}

fn load_file(path: &Path) -> Result<GuardrailSet, ConfigErrors> {
    let text = std::fs::read_to_string(path).map_err(|e| {
        ConfigErrors(vec![ConfigIssue {
            file: path.to_owned(),
            key: String::new(),
            message: format!("cannot read: {e}"),
        }])
    })?;
    let name = path
        .file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_default();
    parse_set(path, &name, &text)
}

/// Parses and checks one guardrail policy text as the set `name`; `path` only labels the
/// messages. Errors list every mistake, each located by `path` and the dotted key
/// (`output.2.pattern`), or by `path` alone for a text that is not TOML.
pub fn parse_set(path: &Path, name: &str, text: &str) -> Result<GuardrailSet, ConfigErrors> {
    let issue = |key: String, message: String| ConfigIssue {
        file: path.to_owned(),
        key,
        message,
    };
    let (file, mut issues) = read_toml::<PolicyFile>(path, text, &|parent| match parent {
        [] => Some(struct_fields::<PolicyFile>()),
        ["input" | "output", _] => Some(struct_fields::<RuleFile>()),
        _ => None,
    });
    let Some(file) = file else {
        return Err(ConfigErrors(issues));
    };
    let mut stage = |stage: &str, rules: Vec<RuleFile>| -> Vec<Rule> {
        let mut out = Vec::new();
        for (i, r) in rules.into_iter().enumerate() {
            match parse_rule(stage, i, r) {
                Ok(rule) => out.push(rule),
                Err((key, message)) => issues.push(issue(key, message)),
            }
        }
        out
    };
    let input = stage("input", file.input);
    let output = stage("output", file.output);
    if !issues.is_empty() {
        return Err(ConfigErrors(issues));
    }
    let compile =
        |rules| StageRules::new(rules).map_err(|e| ConfigErrors(vec![issue(String::new(), e)]));
    Ok(GuardrailSet {
        name: name.to_owned(),
        description: file.description,
        input: compile(input)?,
        output: compile(output)?,
    })
}

/// A mistake in one rule: (dotted key, message). A rule has at most one.
type RuleIssue = (String, String);

/// Rule `i` of `stage` ("input" or "output"), checked.
fn parse_rule(stage: &str, i: usize, r: RuleFile) -> Result<Rule, RuleIssue> {
    let key = |field: &str| format!("{stage}.{i}.{field}");
    let detector = rule_detector(&r).map_err(|(field, message)| (key(field), message))?;
    if matches!(detector, Detector::MaxChars(_)) && r.action == Action::Redact {
        return Err((
            key("action"),
            "max_chars can block or flag, not redact".into(),
        ));
    }
    let pattern_key = || {
        key(if r.keywords.is_some() {
            "keywords"
        } else {
            "pattern"
        })
    };
    if detector.matches_empty() {
        return Err((
            pattern_key(),
            "matches empty text, so it would fire on every text".into(),
        ));
    }
    if stage == "output"
        && let Err(message) = check_stream_hold_back(&detector, r.action)
    {
        return Err((pattern_key(), message));
    }
    Ok(Rule {
        name: r.name,
        detector,
        action: r.action,
    })
}

/// The rule's detector, or (the field at fault, message).
fn rule_detector(r: &RuleFile) -> Result<Detector, (&'static str, String)> {
    Ok(match r.detect.as_str() {
        "email" => Detector::Email,
        "phone" => Detector::Phone,
        "payment_card" => Detector::PaymentCard,
        "iban" => Detector::Iban,
        "us_ssn" => Detector::UsSsn,
        "injection" => Detector::Injection,
        "regex" => match &r.pattern {
            Some(p) => match regex::Regex::new(p) {
                Ok(_) => Detector::Regex(p.clone()),
                Err(e) => return Err(("pattern", format!("not a regular expression: {e}"))),
            },
            None => return Err(("pattern", "detect = \"regex\" needs a pattern".into())),
        },
        "keywords" => match &r.keywords {
            Some(words) if !words.is_empty() => Detector::Keywords(words.clone()),
            _ => {
                return Err((
                    "keywords",
                    "detect = \"keywords\" needs a non-empty keywords list".into(),
                ));
            }
        },
        "max_chars" => match r.limit {
            Some(limit) if limit > 0 => Detector::MaxChars(limit),
            _ => {
                return Err((
                    "limit",
                    "detect = \"max_chars\" needs a limit above 0".into(),
                ));
            }
        },
        other => {
            return Err((
                "detect",
                format!(
                    "unknown detector `{other}`: use email, phone, payment_card, iban, us_ssn, regex, injection, keywords or max_chars"
                ),
            ));
        }
    })
}

/// A stream holds back the longest match of a rule that rewrites it, so that a match cut
/// across two chunks is treated as in the whole answer: an output rule that blocks or
/// redacts must have a bounded match.
fn check_stream_hold_back(detector: &Detector, action: Action) -> Result<(), String> {
    if action == Action::Flag {
        return Ok(());
    }
    let longest = detector.longest_match();
    if longest.is_none_or(|n| n > detect::MAX_MATCH_CHARS) {
        let length = longest.map_or("any length".to_owned(), |n| format!("{n} characters"));
        return Err(format!(
            "can match text of {length}, more than a stream can hold back ({} characters) on an output `{}` rule; bound each repetition (`\\s{{1,20}}` instead of `\\s+`)",
            detect::MAX_MATCH_CHARS,
            if action == Action::Block {
                "block"
            } else {
                "redact"
            }
        ));
    }
    Ok(())
}

/// (version, arm, stage, rule, action).
type CountKey = (String, String, Stage, String, Action);

/// Counts of every block, redaction and flag, by version, arm, stage and rule.
#[derive(Default)]
pub struct GuardrailCounters {
    counts: Mutex<BTreeMap<CountKey, u64>>,
}

/// How often one guardrail rule fired, per version, arm, stage and action.
#[derive(Debug, Clone, Serialize, PartialEq, utoipa::ToSchema)]
#[schema(as = GuardrailCount)]
pub struct CountRow {
    /// The version that answered.
    pub version: String,
    pub(crate) arm: String,
    pub(crate) stage: Stage,
    /// The rule's name in its set.
    pub rule: String,
    pub(crate) action: Action,
    /// Times it fired since the process started.
    pub count: u64,
}

impl GuardrailCounters {
    /// Adds what fired; the lock is only taken when a rule fired.
    pub(crate) fn add(&self, version: &str, arm: &str, stage: Stage, fired: &[(String, Action)]) {
        if fired.is_empty() {
            return;
        }
        let mut counts = self.counts.lock().unwrap_or_else(|e| e.into_inner());
        for (rule, action) in fired {
            *counts
                .entry((
                    version.to_owned(),
                    arm.to_owned(),
                    stage,
                    rule.clone(),
                    *action,
                ))
                .or_default() += 1;
        }
    }

    /// Every count so far, ordered by version, arm, stage, rule and action.
    pub fn rows(&self) -> Vec<CountRow> {
        let counts = self.counts.lock().unwrap_or_else(|e| e.into_inner());
        counts
            .iter()
            .map(|((version, arm, stage, rule, action), count)| CountRow {
                version: version.clone(),
                arm: arm.clone(),
                stage: *stage,
                rule: rule.clone(),
                action: *action,
                count: *count,
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const ISSUE_EXAMPLE: &str = include_str!("../../policies/guardrails/default.toml");

    fn write(dir: &Path, name: &str, text: &str) {
        std::fs::create_dir_all(dir).unwrap();
        std::fs::write(dir.join(name), text).unwrap();
    }

    #[test]
    fn the_shipped_policy_loads_and_acts_as_written() {
        let dir = tempfile::tempdir().unwrap();
        write(dir.path(), "default.toml", ISSUE_EXAMPLE);
        let sets = load_dir(dir.path()).unwrap();
        let set = &sets["default"];
        let blocked = set.input.apply("my card is 4111 1111 1111 1111");
        assert_eq!(blocked.blocked_by.as_deref(), Some("no-card-numbers"));
        let out = set
            .output
            .apply("write to jane.doe@example.com about Project  Nightingale");
        assert_eq!(out.blocked_by.as_deref(), Some("no-codenames"));
        assert_eq!(
            out.redacted.as_deref(),
            Some("write to [redacted:email] about Project  Nightingale")
        );
        let long = set.output.apply(&"a".repeat(4001));
        assert_eq!(long.fired, [("long-answers".to_owned(), Action::Flag)]);
        assert!(set.output.apply("hello").fired.is_empty());
    }

    #[test]
    fn mistakes_name_the_file_and_key() {
        let dir = tempfile::tempdir().unwrap();
        write(
            dir.path(),
            "bad.toml",
            "[[output]]\nname = \"x\"\ndetect = \"regex\"\npattern = \"(\"\naction = \"block\"\n[[input]]\nname = \"y\"\ndetect = \"dna\"\naction = \"flag\"\n",
        );
        let errors = load_dir(dir.path()).unwrap_err().to_string();
        assert!(
            errors.contains("bad.toml: input.0.detect: unknown detector `dna`"),
            "{errors}"
        );
        assert!(
            errors.contains("bad.toml: output.0.pattern: not a regular expression"),
            "{errors}"
        );
    }

    #[test]
    fn overlapping_redactions_merge() {
        assert_eq!(
            redact("abcdef", vec![(1, 3, "x"), (2, 5, "y")]),
            "a[redacted:x]f"
        );
    }

    fn rule(name: &str, detector: Detector, action: Action) -> Rule {
        Rule {
            name: name.into(),
            detector,
            action,
        }
    }

    #[test]
    fn the_first_blocking_rule_that_fires_is_the_one_named() {
        let rules = StageRules::new(vec![
            rule("no-emails", Detector::Email, Action::Block),
            rule("no-cards", Detector::PaymentCard, Action::Block),
        ])
        .unwrap();
        let applied = rules.apply("bob@example.com, 4111 1111 1111 1111");
        assert_eq!(applied.blocked_by.as_deref(), Some("no-emails"));
        assert_eq!(applied.fired.len(), 2);
        assert!(!rules.is_empty());
        assert!(StageRules::new(vec![]).unwrap().is_empty());
        // A set's rules show by name in its `Debug` form (as in a configuration dump).
        assert_eq!(format!("{rules:?}"), r#"["no-emails", "no-cards"]"#);
    }

    #[test]
    fn pii_is_masked_wherever_it_stands() {
        assert_eq!(
            redact_pii("bob@example.com wrote: card 4111 1111 1111 1111, SSN 123-45-6789"),
            "[redacted:email] wrote: card [redacted:payment_card], SSN [redacted:us_ssn]"
        );
        assert_eq!(
            redact_pii("IBAN GB82 WEST 1234 5698 7654 32; call 415-555-0134"),
            "IBAN [redacted:iban]; call [redacted:phone]"
        );
        assert_eq!(redact_pii("nothing here"), "nothing here");
    }

    #[test]
    fn every_detector_can_be_named_and_a_bad_one_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let rule = |stage: &str, name: &str, detect: &str, extra: &str| {
            format!(
                "[[{stage}]]\nname = \"{name}\"\ndetect = \"{detect}\"\naction = \"flag\"\n{extra}"
            )
        };
        let good: String = [
            rule("input", "a", "email", ""),
            rule("input", "b", "phone", ""),
            rule("input", "c", "payment_card", ""),
            rule("input", "d", "iban", ""),
            rule("input", "e", "us_ssn", ""),
            rule("input", "f", "injection", ""),
            rule("output", "g", "regex", "pattern = \"x+\"\n"),
            rule("output", "h", "keywords", "keywords = [\"secret\"]\n"),
            rule("output", "i", "max_chars", "limit = 1\n"),
        ]
        .concat();
        write(dir.path(), "all.toml", &good);
        let sets = load_dir(dir.path()).unwrap();
        let kinds: Vec<&str> = (sets["all"].input.rules.iter())
            .chain(&sets["all"].output.rules)
            .map(|r| r.detector.kind())
            .collect();
        assert_eq!(
            kinds,
            [
                "email",
                "phone",
                "payment_card",
                "iban",
                "us_ssn",
                "injection",
                "regex",
                "keywords",
                "max_chars"
            ]
        );
        let bad: String = [
            rule("output", "g", "regex", ""),
            rule("output", "h", "keywords", "keywords = []\n"),
            rule("output", "i", "max_chars", "limit = 0\n"),
            rule("output", "j", "max_chars", "limit = 9\n").replace("flag", "redact"),
        ]
        .concat();
        let bad_dir = tempfile::tempdir().unwrap();
        write(bad_dir.path(), "bad.toml", &bad);
        let errors = load_dir(bad_dir.path()).unwrap_err().to_string();
        for want in [
            "output.0.pattern: detect = \"regex\" needs a pattern",
            "output.1.keywords: detect = \"keywords\" needs a non-empty keywords list",
            "output.2.limit: detect = \"max_chars\" needs a limit above 0",
            "output.3.action: max_chars can block or flag, not redact",
        ] {
            assert!(errors.contains(want), "{want}: {errors}");
        }
    }

    #[test]
    fn an_output_rule_that_rewrites_a_stream_must_have_a_longest_match() {
        let dir = tempfile::tempdir().unwrap();
        let rule = |stage: &str, action: &str, pattern: &str| {
            format!(
                "[[{stage}]]\nname = \"r\"\ndetect = \"regex\"\naction = \"{action}\"\npattern = '{pattern}'\n"
            )
        };
        // Unbounded on the input, or only flagged on the output: nothing is held back.
        let good = [
            rule("input", "block", r"project\s+nightingale"),
            rule("output", "flag", r"project\s+nightingale"),
            rule("output", "block", r"project\s{1,20}nightingale"),
        ]
        .concat();
        write(dir.path(), "good.toml", &good);
        let sets = load_dir(dir.path()).unwrap();
        assert_eq!(sets["good"].output.holdback_chars(), 7 + 20 + 11 + 1);
        let bad = [
            rule("output", "block", r"project\s+nightingale"),
            rule("output", "redact", r"secret=\S{1,2000}"),
            rule("output", "flag", r"x*"),
        ]
        .concat();
        let bad_dir = tempfile::tempdir().unwrap();
        write(bad_dir.path(), "bad.toml", &bad);
        let errors = load_dir(bad_dir.path()).unwrap_err().to_string();
        for want in [
            "output.0.pattern: can match text of any length, more than a stream can hold back (1024 characters) on an output `block` rule; bound each repetition (`\\s{1,20}` instead of `\\s+`)",
            "output.1.pattern: can match text of 2007 characters",
            "output.2.pattern: matches empty text",
        ] {
            assert!(errors.contains(want), "{want}: {errors}");
        }
    }

    #[test]
    fn counters_count_each_rule_that_fired() {
        let counters = GuardrailCounters::default();
        let fired = [("no-emails".to_owned(), Action::Redact)];
        counters.add("v2", "canary", Stage::Output, &fired);
        counters.add("v2", "canary", Stage::Output, &fired);
        counters.add("v2", "canary", Stage::Output, &[]);
        assert_eq!(
            counters.rows(),
            [CountRow {
                version: "v2".into(),
                arm: "canary".into(),
                stage: Stage::Output,
                rule: "no-emails".into(),
                action: Action::Redact,
                count: 2,
            }]
        );
    }

    #[test]
    fn a_misspelt_key_is_named_with_the_key_meant() {
        let text = "descripton = \"x\"\n[[output]]\nname = \"r\"\ndetect = \"keywords\"\nkeyword = [\"a\"]\nkeywords = [\"a\"]\naction = \"flag\"\n";
        let errors = parse_set(Path::new("p.toml"), "p", text)
            .unwrap_err()
            .to_string();
        for want in [
            "p.toml: descripton: unknown key; did you mean `description`?",
            "p.toml: output.0.keyword: unknown key; did you mean `keywords`?",
        ] {
            assert!(errors.contains(want), "{want}: {errors}");
        }
    }

    #[test]
    fn an_output_rule_may_match_exactly_as_much_as_a_stream_holds_back() {
        let rule = |pattern: &str| {
            format!(
                "[[output]]\nname = \"r\"\ndetect = \"regex\"\naction = \"block\"\npattern = '{pattern}'\n"
            )
        };
        let set = parse_set(Path::new("p.toml"), "p", &rule("x{1024}")).unwrap();
        assert_eq!(set.output.holdback_chars(), 1025);
        let errors = parse_set(Path::new("p.toml"), "p", &rule("x{1025}"))
            .unwrap_err()
            .to_string();
        assert!(
            errors.contains("can match text of 1025 characters"),
            "{errors}"
        );
    }
}
