//! The VMM on real KVM with the bundled test guest: it boots in 64-bit mode, keeps its
//! counter, dirties memory, writes numbered records to its virtio-blk disk (a VHD) and
//! prints on the serial console; paused, saved, and restored into a fresh VM, it goes
//! on exactly where it stopped.
//!
//! Needs /dev/kvm: without it the tests fail, saying so.

use std::io::Write;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use vmm::devices::serial::ConsoleSink;
use vmm::machine::memory::{snapshot, take_vmm_dirty};
use vmm::machine::{Machine, RunState, state_codec};
use vmm::test_guest::{TestGuestParams, TestGuestStatus, decode_record};
use vmm::vhd::{DiskType, VhdImage};

const MEMORY: u64 = 64 << 20;

/// A console that keeps what the guest prints.
#[derive(Clone, Default)]
struct Console(Arc<Mutex<Vec<u8>>>);

impl Write for Console {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Console {
    fn text(&self) -> String {
        String::from_utf8_lossy(&self.0.lock().unwrap()).into_owned()
    }
    fn sink(&self) -> ConsoleSink {
        Box::new(self.clone())
    }
}

fn require_kvm() {
    assert!(
        Path::new("/dev/kvm").exists(),
        "this test runs VMs and needs /dev/kvm (load kvm_intel or kvm_amd, or run on a host with virtualisation)"
    );
}

fn params() -> TestGuestParams {
    TestGuestParams {
        dirty_bytes_per_s: 16 << 20,
        record_every_ms: 10,
        print_every_ms: 50,
    }
}

/// Waits until the guest's status satisfies `done`, failing with the console's text.
fn wait_for(
    m: &Machine,
    console: &Console,
    what: &str,
    done: impl Fn(&TestGuestStatus) -> bool,
) -> TestGuestStatus {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let s = m.test_guest_status();
        assert!(!s.failed, "the guest failed: {}", console.text());
        if done(&s) {
            return s;
        }
        assert!(
            Instant::now() < deadline,
            "timed out waiting for {what}: status {s:?}, vCPU {:?}, console:\n{}",
            m.run_state(),
            console.text()
        );
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// The records on the disk, checked to be numbered 0, 1, ... with rising counters.
fn records_on(disk: &Path) -> Vec<(u64, u64, u64)> {
    let vhd = VhdImage::open_path(disk, true).unwrap();
    let mut out: Vec<(u64, u64, u64)> = Vec::new();
    let mut sector = [0u8; 512];
    for s in 1..vhd.size() / 512 {
        vhd.read_at(&mut sector, s * 512).unwrap();
        let Some(r) = decode_record(&sector) else {
            break;
        };
        assert_eq!(r.0, s - 1, "record at sector {s} has number {}", r.0);
        if let Some(prev) = out.last() {
            assert!(r.1 > prev.1, "counter went back: {prev:?} then {r:?}");
        }
        out.push(r);
    }
    out
}

/// A VM of [`MEMORY`] with a fresh 16 MiB dynamic VHD in `dir`: (disk, console, VM).
fn new_vm(dir: &Path) -> (std::path::PathBuf, Console, Machine) {
    let disk = dir.join("guest.vhd");
    VhdImage::create_path(&disk, DiskType::Dynamic, 16 << 20).unwrap();
    let console = Console::default();
    let m = Machine::new(
        MEMORY,
        console.sink(),
        VhdImage::open_path(&disk, false).unwrap(),
    )
    .unwrap();
    (disk, console, m)
}

#[test]
fn the_test_guest_runs_on_kvm() {
    require_kvm();
    let dir = tempfile::tempdir().unwrap();
    let (disk, console, mut m) = new_vm(dir.path());
    m.load_test_guest(&params()).unwrap();
    m.start().unwrap();
    let s = wait_for(&m, &console, "5 records and a progress line", |s| {
        s.records >= 5 && s.pages_dirtied > 0
    });
    assert_eq!(s.disk_sectors, 32768, "the guest sees the VHD's size");
    wait_for(&m, &console, "a progress line", |_| {
        console.text().contains("counter=")
    });
    m.pause().unwrap();
    let paused = m.test_guest_status();
    std::thread::sleep(Duration::from_millis(50));
    assert_eq!(m.test_guest_status(), paused, "a paused guest does not run");
    // The device's writes to guest memory (disk reads into it, used-ring updates)
    // are in the VMM's dirty bitmap.
    assert!(take_vmm_dirty(m.ram()).iter().any(|&w| w != 0));
    m.resume().unwrap();
    wait_for(&m, &console, "the guest to go on after resuming", |s| {
        s.counter > paused.counter
    });
    m.stop();
    assert!(matches!(m.run_state(), RunState::Stopped(_)));
    let text = console.text();
    assert!(
        text.contains("test guest: started, 32768 disk sectors, 0 records on disk"),
        "{text}"
    );
    let final_status = m.test_guest_status();
    let records = records_on(&disk);
    assert!(
        records.len() as u64 >= final_status.records.min(5),
        "{records:?}"
    );
    println!("guest: {final_status:?}; {} records on disk", records.len());
}

#[test]
fn a_saved_guest_goes_on_exactly_in_a_fresh_vm() {
    require_kvm();
    let dir = tempfile::tempdir().unwrap();
    let disk = dir.path().join("guest.vhd");
    VhdImage::create_path(&disk, DiskType::Dynamic, 16 << 20).unwrap();
    let first_console = Console::default();
    let mut first = Machine::new(
        MEMORY,
        first_console.sink(),
        VhdImage::open_path(&disk, false).unwrap(),
    )
    .unwrap();
    first.load_test_guest(&params()).unwrap();
    first.start().unwrap();
    wait_for(&first, &first_console, "5 records", |s| s.records >= 5);

    first.pause().unwrap();
    let before = first.test_guest_status();
    // Through the bytes `vmm save` writes and a migration sends.
    let state = state_codec::decode(&state_codec::encode(&first.save().unwrap())).unwrap();
    let memory = snapshot(first.ram());
    first.devices().blk.disk().flush().unwrap();
    first.stop();
    drop(first);

    let second_console = Console::default();
    let mut second = Machine::restore(
        &state,
        &memory,
        second_console.sink(),
        VhdImage::open_path(&disk, false).unwrap(),
    )
    .unwrap();
    // Before it runs, the new VM holds exactly what the old one had.
    assert_eq!(second.test_guest_status(), before);
    assert!(
        snapshot(second.ram()) == memory,
        "memory differs after restore"
    );
    let restored = second.vcpu_state().unwrap();
    assert_eq!(restored.regs, state.vcpu.regs);
    assert_eq!(restored.sregs, state.vcpu.sregs);
    assert_eq!(restored.msrs.len(), state.vcpu.msrs.len());
    assert_eq!(second.save().unwrap().devices, state.devices);

    second.start().unwrap();
    let after = wait_for(&second, &second_console, "5 more records", |s| {
        s.records >= before.records + 5
    });
    assert!(
        after.counter > before.counter,
        "the counter went on: {before:?} then {after:?}"
    );
    assert!(after.clock_ms >= before.clock_ms, "the guest clock went on");
    wait_for(&second, &second_console, "a progress line", |_| {
        second_console.text().contains("counter=")
    });
    second.pause().unwrap();
    let last = second.test_guest_status();
    second.devices().blk.disk().flush().unwrap();
    second.stop();

    let text = second_console.text();
    assert!(
        !text.contains("started"),
        "the restored guest did not boot again: {text}"
    );
    let first_line = text.lines().find(|l| l.starts_with("counter=")).unwrap();
    let counter: u64 = first_line["counter=".len()..]
        .split(' ')
        .next()
        .unwrap()
        .parse()
        .unwrap();
    assert!(counter > before.counter, "{first_line} after {before:?}");
    let records = records_on(&disk);
    // Every record the guest counted is on the disk, in order; one more may be there
    // when the pause came between the record's write and the count's increment.
    let n = records.len() as u64;
    assert!(
        n == last.records || n == last.records + 1,
        "{n} records on disk, the guest counted {}",
        last.records
    );
    println!(
        "saved at counter {} with {} records; restored guest went on to counter {} and {} records",
        before.counter, before.records, last.counter, last.records
    );
}

/// The Linux boot path on real KVM, with a stand-in kernel (a stock kernel does not
/// boot on nested KVM): a bzImage whose 64-bit entry point prints the zero page's
/// boot flag (0xaa55, at %rsi + 0x1fe) and the first byte of the command line (through
/// the zero page's cmd_line_ptr) on COM1, then halts.
#[test]
fn a_bzimage_64_bit_entry_runs_with_the_zero_page() {
    require_kvm();
    let dir = tempfile::tempdir().unwrap();
    // Setup: boot sector and one setup sector with the header; then the kernel.
    let mut image = vec![0u8; 1024];
    image[0x1f1] = 1;
    image[0x1fe..0x200].copy_from_slice(&0xaa55u16.to_le_bytes());
    image[0x202..0x206].copy_from_slice(b"HdrS");
    image[0x206..0x208].copy_from_slice(&0x020fu16.to_le_bytes());
    image[0x211] = 1;
    image[0x214..0x218].copy_from_slice(&0x10_0000u32.to_le_bytes());
    let mut kernel = vec![0x90u8; 0x200]; // the 32-bit entry, unused: nops
    kernel.extend_from_slice(&[
        0x66, 0xba, 0xf8, 0x03, // mov dx, 0x3f8
        0x8a, 0x86, 0xfe, 0x01, 0x00, 0x00, // mov al, [rsi + 0x1fe]
        0xee, // out dx, al
        0x8a, 0x86, 0xff, 0x01, 0x00, 0x00, // mov al, [rsi + 0x1ff]
        0xee, // out dx, al
        0x8b, 0x9e, 0x28, 0x02, 0x00, 0x00, // mov ebx, [rsi + 0x228] (cmd_line_ptr)
        0x8a, 0x03, // mov al, [rbx]
        0xee, // out dx, al
        0xf4, // hlt
        0xeb, 0xfd, // jmp back to hlt
    ]);
    image.extend_from_slice(&kernel);
    let path = dir.path().join("bzImage");
    std::fs::write(&path, &image).unwrap();
    let (_, console, mut m) = new_vm(dir.path());
    m.load_linux(&path, None, "Zconsole=ttyS0").unwrap();
    m.start().unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    while console.0.lock().unwrap().len() < 3 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(10));
    }
    m.stop();
    assert_eq!(
        *console.0.lock().unwrap(),
        vec![0x55, 0xaa, b'Z'],
        "vCPU {:?}",
        m.run_state()
    );
}
