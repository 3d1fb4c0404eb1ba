//! Planned moves of the coordinator role under load: `csvctl volume move` and then
//! `csvctl node drain` of the new coordinator's node while fsx runs on all three
//! nodes' mounts. The role moves each time; no fsx sees an error; fsck of the LUN is
//! clean afterwards.

use std::path::Path;
use std::time::Duration;

use csvfs_tests::cluster::Cluster;
use csvfs_tests::{
    Scratch, assert_fsck_clean, env_number, last_lines, require_root_and_fuse, run_fsx,
};

const LABEL: &str = "Volume1";
const LIMIT: Duration = Duration::from_secs(30);

#[test]
fn volume_move_and_node_drain_while_fsx_runs_on_every_node() {
    require_root_and_fuse();
    let s = Scratch::new();
    let (t, mut c) = Cluster::on_tgtd(&s, 3, LABEL, 512 << 20);
    let all = [0, 1, 2];
    let (first, before) = c.wait_for_coordinator(&all, 0, LIMIT);
    c.wait_for_followers(&all, first, LIMIT);
    let mounts: Vec<_> = c
        .nodes
        .iter()
        .map(|n| n.wait_mounted(LABEL, LIMIT))
        .collect();

    // Three fsx at once on two cores: 10,000 operations each in CI.
    let ops = env_number("CSVFS_FSX_OPS", 10_000);
    let runs: Vec<_> = mounts
        .iter()
        .enumerate()
        .map(|(i, mp)| {
            let file = mp.join(format!("fsx.move.{i}"));
            std::thread::spawn(move || run_fsx(&file, 11 + i as u64, ops))
        })
        .collect();
    std::thread::sleep(Duration::from_secs(3));
    assert!(
        runs.iter().all(|r| !r.is_finished()),
        "an fsx ended before the first move: make them longer"
    );

    // A move to a named node.
    let target = (first + 1) % 3;
    let (ok, text) = c.csvctl(&["volume", "move", LABEL, "--to", &c.nodes[target].name]);
    assert!(ok, "csvctl volume move: {text}\n{}", c.describe());
    assert!(
        text.contains(&format!(
            "coordinator moved from {} to {}",
            c.nodes[first].name, c.nodes[target].name
        )),
        "{text}"
    );
    print!("{text}");
    let (now, after_move) = c.wait_for_coordinator(&all, before.epoch, LIMIT);
    assert_eq!(now, target, "{}", c.describe());
    c.wait_for_followers(&all, target, LIMIT);

    std::thread::sleep(Duration::from_secs(2));
    assert!(
        runs.iter().all(|r| !r.is_finished()),
        "an fsx ended before the drain: make them longer"
    );
    // The drain of the coordinator's node: the role goes to another node.
    let (ok, text) = c.csvctl(&["node", "drain", &c.nodes[target].name]);
    assert!(ok, "csvctl node drain: {text}\n{}", c.describe());
    assert!(
        text.contains(&format!(
            "coordinator moved from {} to ",
            c.nodes[target].name
        )),
        "{text}"
    );
    print!("{text}");
    let (drained_to, _) = c.wait_for_coordinator(&all, after_move.epoch, LIMIT);
    assert_ne!(drained_to, target, "{}", c.describe());
    // Draining a node that coordinates nothing moves nothing.
    let (ok, text) = c.csvctl(&["node", "drain", &c.nodes[target].name]);
    assert!(ok && text.contains("coordinates no volume"), "{text}");

    for (i, r) in runs.into_iter().enumerate() {
        let (ok, text) = r.join().unwrap();
        assert!(
            ok,
            "fsx on {} failed across the moves:\n{}\n{}",
            c.nodes[i].name,
            last_lines(&text, 40),
            c.describe()
        );
        println!(
            "fsx on {}: {ops} operations A-OK across the moves",
            c.nodes[i].name
        );
    }

    for n in &mut c.nodes {
        n.stop();
    }
    // fsck refuses a volume whose heartbeat slots still advance: wait them out.
    std::thread::sleep(Duration::from_secs(3));
    assert_fsck_clean(Path::new(&t.url_as("fsck")));
}

#[test]
fn a_move_to_an_unknown_node_or_volume_says_what_is_wrong() {
    require_root_and_fuse();
    let s = Scratch::new();
    let (_t, c) = Cluster::on_tgtd(&s, 2, LABEL, 64 << 20);
    let (coord, _) = c.wait_for_coordinator(&[0, 1], 0, LIMIT);
    c.wait_for_followers(&[0, 1], coord, LIMIT);
    let (ok, text) = c.csvctl(&["volume", "move", LABEL, "--to", "n9"]);
    assert!(!ok && text.contains("has no node \"n9\""), "{text}");
    let (ok, text) = c.csvctl(&["volume", "move", "Nope", "--to", "n1"]);
    assert!(!ok && text.contains("has no volume \"Nope\""), "{text}");
    // A move to the coordinator itself changes nothing.
    let name = &c.nodes[coord].name;
    let (ok, text) = c.csvctl(&["volume", "move", LABEL, "--to", name]);
    assert!(
        ok && text.contains(&format!("{name} coordinates it already")),
        "{text}"
    );
}
