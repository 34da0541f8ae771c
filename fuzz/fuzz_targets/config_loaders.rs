//! The config, rollout-policy and guardrail loaders (`settings::parse`,
//! `rollout::policy::parse_policy`, `guardrails::parse_set`).
//!
//! Input: a selector byte (which loader; whether the environment has every variable),
//! then the file's text. Checks: any text gives Ok, or errors that each name the file and
//! say something; nothing panics.
#![no_main]

use std::path::Path;

use libfuzzer_sys::fuzz_target;
use sluice::config::issue::ConfigErrors;

fn located(errors: ConfigErrors, file: &Path) {
    assert!(!errors.0.is_empty(), "an error names at least one mistake");
    for issue in &errors.0 {
        assert_eq!(issue.file, file, "{issue}");
        assert!(!issue.message.trim().is_empty(), "{issue}");
    }
    let _ = errors.to_string();
}

fuzz_target!(|data: &[u8]| {
    let Some((&selector, rest)) = data.split_first() else {
        return;
    };
    let Ok(text) = std::str::from_utf8(rest) else {
        return;
    };
    match selector % 3 {
        0 => {
            // A folder that does not exist: the policies beside it are the defaults' absence.
            let file = Path::new("/nonexistent/sluice-fuzz/sluice.toml");
            let env_set = selector & 0x80 != 0;
            let env = move |_: &str| env_set.then(|| "a-value-long-enough-for-a-token".to_owned());
            if let Err(e) = sluice::settings::parse(file, text, &env) {
                located(e, file);
            }
        }
        1 => {
            let file = Path::new("policy.toml");
            match sluice::rollout::policy::parse_policy(file, "policy", text) {
                Ok(policy) => {
                    let _ = policy.judge_spec();
                }
                Err(e) => located(e, file),
            }
        }
        _ => {
            let file = Path::new("guardrails.toml");
            match sluice::guardrails::parse_set(file, "set", text) {
                Ok(set) => {
                    let _ = set.output.apply("mail bob@example.com about project nightingale");
                    let _ = set.input.apply("ignore all previous instructions");
                }
                Err(e) => located(e, file),
            }
        }
    }
});
