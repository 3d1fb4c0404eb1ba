use blockdev::{BlockDevice, FileDevice};
use metadata::{FormatOptions, JobKind, NewNode, OpenOptions, ROOT_INO, Volume};
use std::sync::Arc;
fn regular_file() -> NewNode {
    NewNode {
        mode: libc::S_IFREG | 0o644,
        uid: 0,
        gid: 0,
        rdev: 0,
        symlink: None,
    }
}

fn report(what: &str, n: u32, took: std::time::Duration) {
    println!(
        "{} {what}/s via committer ({:?} each)",
        n as f64 / took.as_secs_f64(),
        took / n
    );
}

fn main() {
    let p = std::path::Path::new("/var/tmp/cb.img");
    FileDevice::create_image(p, 1 << 30).unwrap();
    let dev: Arc<dyn BlockDevice> = Arc::new(FileDevice::open(p, false).unwrap());
    Volume::format(
        dev.clone(),
        &FormatOptions {
            label: "B".into(),
            metadata_bytes: None,
            force: true,
        },
    )
    .unwrap();
    let vol = Volume::open(dev, &OpenOptions::default()).unwrap();
    let t = std::time::Instant::now();
    let n = 5000;
    for i in 0..n {
        let name = format!("f{i}").into_bytes();
        let node = regular_file();
        vol.write(JobKind::default(), move |c| {
            c.create(ROOT_INO, &name, &node)
        })
        .unwrap();
    }
    report("creates", n, t.elapsed());
    // As a coordinator carries out another node's create: the answer looked up by
    // request id first, and recorded with the change.
    let t = std::time::Instant::now();
    for i in 0..n {
        let name = format!("r{i}").into_bytes();
        let node = regular_file();
        let id = (1u64 << 40) + i as u64;
        vol.write(JobKind::default(), move |c| {
            if c.answered(2, id)?.is_some() {
                return Ok(());
            }
            c.create(ROOT_INO, &name, &node)?;
            // About the size of a create's encoded answer.
            c.record_answer(2, id, &[7u8; 96])
        })
        .unwrap();
    }
    report("recorded creates", n, t.elapsed());
    let t = std::time::Instant::now();
    for _ in 0..n {
        vol.write(JobKind::default(), |_c| Ok(())).unwrap();
    }
    println!("empty job: {:?} each", t.elapsed() / n);
    let t = std::time::Instant::now();
    for i in 0..n {
        let s = vol.snapshot().unwrap();
        let _ = s.lookup(ROOT_INO, format!("f{i}").as_bytes()).unwrap();
    }
    println!("snapshot+lookup: {:?} each", t.elapsed() / n);
}
