//! Config layer: precedence and error messages.

use std::path::PathBuf;

use spx::config::{self, Config, ConfigBuilder};
use toml::Value;

fn write(dir: &tempfile::TempDir, name: &str, text: &str) -> PathBuf {
    let p = dir.path().join(name);
    std::fs::write(&p, text).unwrap();
    p
}

#[test]
fn precedence_defaults_file_set_flag() {
    let dir = tempfile::tempdir().unwrap();
    let defaults = Config::default();
    assert_eq!(defaults.run.seed, 42);

    let f = write(
        &dir,
        "a.toml",
        "[run]\nseed = 7\nthreads = 3\ndevice = \"wgpu\"\n",
    );
    let c = config::load(Some(&f), &[], &[]).unwrap();
    assert_eq!(
        (c.run.seed, c.run.threads, c.run.device.to_string().as_str()),
        (7, 3, "wgpu")
    );
    // Keys the file does not mention keep their defaults.
    assert_eq!(c.run.out_dir, defaults.run.out_dir);

    let sets = vec!["run.seed=8".to_string(), "run.device=cuda:1".to_string()];
    let c = config::load(Some(&f), &sets, &[]).unwrap();
    assert_eq!(
        (c.run.seed, c.run.threads, c.run.device.to_string().as_str()),
        (8, 3, "cuda:1")
    );

    let flags = [("run.seed", Value::Integer(9), "--seed")];
    let c = config::load(Some(&f), &sets, &flags).unwrap();
    assert_eq!(
        (c.run.seed, c.run.device.to_string().as_str()),
        (9, "cuda:1")
    );

    // A later --set wins over an earlier one.
    let sets = vec!["run.seed=1".to_string(), "run.seed=2".to_string()];
    assert_eq!(config::load(None, &sets, &[]).unwrap().run.seed, 2);
}

#[test]
fn unknown_key_in_file_names_key_and_file() {
    let dir = tempfile::tempdir().unwrap();
    let f = write(&dir, "bad.toml", "[run]\nsed = 7\n");
    let err = config::load(Some(&f), &[], &[]).unwrap_err().to_string();
    assert!(err.contains("run.sed"), "{err}");
    assert!(err.contains("bad.toml"), "{err}");
    assert!(err.contains("seed"), "lists the known keys: {err}");

    let f = write(&dir, "bad2.toml", "[nosuchsection]\nx = 1\n");
    let err = config::load(Some(&f), &[], &[]).unwrap_err().to_string();
    assert!(
        err.contains("nosuchsection") && err.contains("bad2.toml"),
        "{err}"
    );
}

#[test]
fn bad_type_names_key_and_source() {
    let dir = tempfile::tempdir().unwrap();
    let f = write(&dir, "t.toml", "[run]\nseed = \"many\"\n");
    let err = config::load(Some(&f), &[], &[]).unwrap_err().to_string();
    assert!(err.contains("run.seed") && err.contains("t.toml"), "{err}");
    assert!(err.contains("expected an integer, found a string"), "{err}");

    let err = config::load(None, &["run.threads=-2".into()], &[])
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("--set run.threads=-2") && err.contains("run.threads"),
        "{err}"
    );

    let err = config::load(None, &["run.seed".into()], &[])
        .unwrap_err()
        .to_string();
    assert!(err.contains("section.key=value"), "{err}");

    let f = write(&dir, "broken.toml", "[run\nseed = 1\n");
    let err = config::load(Some(&f), &[], &[]).unwrap_err().to_string();
    assert!(
        err.contains("broken.toml") && err.contains("not valid TOML"),
        "{err}"
    );
}

#[test]
fn show_prints_effective_values_and_round_trips() {
    let c = config::load(None, &["run.seed=123".into()], &[]).unwrap();
    let text = c.to_toml(Some("run")).unwrap();
    assert!(text.contains("seed = 123"), "{text}");
    let back: Config = toml::from_str(&text).unwrap();
    assert_eq!(back, c);
    assert!(c.to_toml(Some("nope")).is_err());
}

#[test]
fn effective_config_is_recorded_and_reloads() {
    let dir = tempfile::tempdir().unwrap();
    let c = ConfigBuilder::new()
        .unwrap()
        .set("run.threads=5")
        .unwrap()
        .build()
        .unwrap();
    let p = c.write_effective(dir.path()).unwrap();
    let reloaded = config::load(Some(&p), &[], &[]).unwrap();
    assert_eq!(reloaded, c);
}
