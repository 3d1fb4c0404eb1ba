//! What a user sees of the three programs before anything runs: `--help` lists every
//! command with a line saying what it does, and `completions bash` prints a script
//! that bash accepts and that completes the commands.

use std::process::Command;

use csvfs_tests::{bin, run_ok};

/// Each program with the commands its `--help` must list.
const PROGRAMS: [(&str, &[&str]); 3] = [
    ("csvfs", &["mount", "node", "completions"]),
    (
        "csvctl",
        &["mkfs", "fsck", "cluster", "node", "volume", "completions"],
    ),
    (
        "vmm",
        &[
            "create",
            "start",
            "stop",
            "list",
            "console",
            "save",
            "restore",
            "migrate",
            "disk",
            "completions",
        ],
    ),
];

#[test]
fn help_lists_every_command_with_a_line_each() {
    for (program, commands) in PROGRAMS {
        let help = run_ok(&bin(program), &["--help"]);
        for c in commands {
            let line = help
                .lines()
                .find(|l| l.trim_start().starts_with(&format!("{c} ")))
                .unwrap_or_else(|| panic!("{program} --help does not list {c}:\n{help}"));
            let what = line.trim_start()[c.len()..].trim();
            assert!(
                what.len() > 10,
                "{program} --help: {c} has no line saying what it does:\n{help}"
            );
        }
    }
}

#[test]
fn bash_completions_parse_and_complete_the_commands() {
    for (program, commands) in PROGRAMS {
        let script = run_ok(&bin(program), &["completions", "bash"]);
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join(program);
        std::fs::write(&file, &script).unwrap();
        // What bash offers after `<program> <TAB>`.
        let probe = format!(
            "source {file}; COMP_WORDS=({program} ''); COMP_CWORD=1; COMP_LINE='{program} '; \
             COMP_POINT=${{#COMP_LINE}}; _{program} {program} '' {program}; echo \"${{COMPREPLY[@]}}\"",
            file = file.display()
        );
        let out = Command::new("bash")
            .args(["-c", &probe])
            .output()
            .expect("bash");
        let offered = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success(),
            "{program}'s bash completion failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        for c in commands {
            assert!(
                offered.split_whitespace().any(|w| w == *c),
                "{program} <TAB> does not offer {c}: {offered}"
            );
        }
    }
}
