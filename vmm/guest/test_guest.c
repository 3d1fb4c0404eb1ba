/*
 * The bundled test guest: a small 64-bit program the VMM loads at 1 MiB and enters in
 * long mode (identity-mapped memory, paging on, no IDT, no interrupts). It keeps a
 * counter in memory, dirties memory at the rate the VMM gives it, writes numbered
 * records to its virtio-blk disk (virtio-mmio, version 2, polled), and prints its
 * progress on the serial port (COM1).
 *
 * The VMM passes a struct guest_params (below) at the address in %rdi; its layout is
 * shared with vmm/src/guest/params.rs. The VMM reads the guest's state out of
 * struct guest_status at GUEST_STATUS_ADDR (same file): tests use it to check that
 * the counter goes on across a migration.
 *
 * Built by vmm/build.rs with gcc -ffreestanding into a flat binary.
 */
typedef unsigned char u8;
typedef unsigned short u16;
typedef unsigned int u32;
typedef unsigned long long u64;

#define PARAMS_MAGIC 0x5453455547565343ULL /* "CSVGUEST" little-endian */
#define RECORD_MAGIC 0x3130434552565343ULL /* "CSVREC01" */
#define STATUS_MAGIC 0x5354415453565343ULL /* "CSVSTATS" */
#define GUEST_STATUS_ADDR 0x6000ULL

#define COM1 0x3f8
#define CLOCK_PORT 0x510
#define IDLE_PORT 0x518 /* a write of n: wait n ms without spinning */
#define IDLE_MS 10
#define PAGE 4096ULL

struct guest_params {
    u64 magic;
    u64 memory_bytes;
    u64 dirty_bytes_per_s;
    u64 dirty_base;
    u64 dirty_len;
    u64 virtio_blk_base;
    u64 record_every_ms;
    u64 print_every_ms;
};

struct guest_status {
    u64 magic;
    u64 counter;
    u64 records;
    u64 pages_dirtied;
    u64 clock_ms;
    u64 disk_sectors;
    u64 failed; /* non-zero: the guest stopped on an error it printed */
};

struct record {
    u64 magic;
    u64 number;
    u64 counter;
    u64 clock_ms;
    u8 pad[512 - 32];
};

static inline void outb(u16 port, u8 v) { __asm__ volatile("outb %0, %1" : : "a"(v), "Nd"(port)); }
static inline void outl(u16 port, u32 v) { __asm__ volatile("outl %0, %1" : : "a"(v), "Nd"(port)); }
static inline u32 inl(u16 port) { u32 v; __asm__ volatile("inl %1, %0" : "=a"(v) : "Nd"(port)); return v; }
static inline void barrier(void) { __asm__ volatile("mfence" ::: "memory"); }
static inline u32 mmio_read(u64 base, u64 off) { return *(volatile u32 *)(base + off); }
static inline void mmio_write(u64 base, u64 off, u32 v) { *(volatile u32 *)(base + off) = v; }

static volatile struct guest_status *const status = (volatile struct guest_status *)GUEST_STATUS_ADDR;

static void puts(const char *s) { while (*s) outb(COM1, (u8)*s++); }

static void putu(u64 v) {
    char buf[24];
    int i = 23;
    buf[i] = 0;
    do { buf[--i] = (char)('0' + v % 10); v /= 10; } while (v);
    puts(&buf[i]);
}

static void halt_forever(void) {
    status->failed = 1;
    for (;;) __asm__ volatile("cli; hlt");
}

static void fail(const char *what) {
    puts("test guest: ");
    puts(what);
    puts("\n");
    halt_forever();
}

/* The VMM's clock: milliseconds since the guest first started, continuous across
 * pauses and migrations; 32 bits, so differences are taken modulo 2^32. */
static u64 clock_ms;
static u32 clock_last;
static u64 clock_now(void) {
    u32 now = inl(CLOCK_PORT);
    clock_ms += (u32)(now - clock_last);
    clock_last = now;
    return clock_ms;
}

/* virtio-mmio registers (version 2) and the block device. */
#define VIRTIO_MAGIC 0x000
#define VIRTIO_VERSION 0x004
#define VIRTIO_DEVICE_ID 0x008
#define VIRTIO_DEVICE_FEATURES 0x010
#define VIRTIO_DEVICE_FEATURES_SEL 0x014
#define VIRTIO_DRIVER_FEATURES 0x020
#define VIRTIO_DRIVER_FEATURES_SEL 0x024
#define VIRTIO_QUEUE_SEL 0x030
#define VIRTIO_QUEUE_NUM_MAX 0x034
#define VIRTIO_QUEUE_NUM 0x038
#define VIRTIO_QUEUE_READY 0x044
#define VIRTIO_QUEUE_NOTIFY 0x050
#define VIRTIO_INTERRUPT_ACK 0x064
#define VIRTIO_STATUS 0x070
#define VIRTIO_QUEUE_DESC_LOW 0x080
#define VIRTIO_QUEUE_DESC_HIGH 0x084
#define VIRTIO_QUEUE_DRIVER_LOW 0x090
#define VIRTIO_QUEUE_DRIVER_HIGH 0x094
#define VIRTIO_QUEUE_DEVICE_LOW 0x0a0
#define VIRTIO_QUEUE_DEVICE_HIGH 0x0a4
#define VIRTIO_CONFIG 0x100

#define QSIZE 8
struct desc { u64 addr; u32 len; u16 flags; u16 next; };
struct avail { u16 flags; u16 idx; u16 ring[QSIZE]; u16 used_event; };
struct used_elem { u32 id; u32 len; };
struct used { u16 flags; u16 idx; struct used_elem ring[QSIZE]; u16 avail_event; };
struct blk_req { u32 type; u32 reserved; u64 sector; };

static struct desc descs[QSIZE] __attribute__((aligned(16)));
static struct avail avail __attribute__((aligned(2)));
static struct used used __attribute__((aligned(4)));
static struct blk_req req;
static volatile u8 req_status;
static struct record sector_buf __attribute__((aligned(512)));
static u64 blk;
static u16 avail_idx;

static void set64(u64 base, u64 low, u64 v) {
    mmio_write(base, low, (u32)v);
    mmio_write(base, low + 4, (u32)(v >> 32));
}

static u64 disk_init(u64 base) {
    if (mmio_read(base, VIRTIO_MAGIC) != 0x74726976) fail("no virtio-mmio device");
    if (mmio_read(base, VIRTIO_VERSION) != 2) fail("virtio-mmio is not version 2");
    if (mmio_read(base, VIRTIO_DEVICE_ID) != 2) fail("the virtio device is not a block device");
    mmio_write(base, VIRTIO_STATUS, 0);
    mmio_write(base, VIRTIO_STATUS, 1 | 2); /* ACKNOWLEDGE | DRIVER */
    mmio_write(base, VIRTIO_DEVICE_FEATURES_SEL, 1);
    if (!(mmio_read(base, VIRTIO_DEVICE_FEATURES) & 1)) fail("the device lacks VIRTIO_F_VERSION_1");
    mmio_write(base, VIRTIO_DRIVER_FEATURES_SEL, 0);
    mmio_write(base, VIRTIO_DRIVER_FEATURES, 0);
    mmio_write(base, VIRTIO_DRIVER_FEATURES_SEL, 1);
    mmio_write(base, VIRTIO_DRIVER_FEATURES, 1);
    mmio_write(base, VIRTIO_STATUS, 1 | 2 | 8); /* FEATURES_OK */
    if (!(mmio_read(base, VIRTIO_STATUS) & 8)) fail("the device refused the features");
    mmio_write(base, VIRTIO_QUEUE_SEL, 0);
    if (mmio_read(base, VIRTIO_QUEUE_NUM_MAX) < QSIZE) fail("the virtqueue is too small");
    mmio_write(base, VIRTIO_QUEUE_NUM, QSIZE);
    set64(base, VIRTIO_QUEUE_DESC_LOW, (u64)descs);
    set64(base, VIRTIO_QUEUE_DRIVER_LOW, (u64)&avail);
    set64(base, VIRTIO_QUEUE_DEVICE_LOW, (u64)&used);
    mmio_write(base, VIRTIO_QUEUE_READY, 1);
    mmio_write(base, VIRTIO_STATUS, 1 | 2 | 8 | 4); /* DRIVER_OK */
    return (u64)mmio_read(base, VIRTIO_CONFIG) | ((u64)mmio_read(base, VIRTIO_CONFIG + 4) << 32);
}

/* One request of type 0 (read), 1 (write) or 4 (flush) on sector_buf; waits for it. */
static void disk_io(u32 type, u64 sector) {
    req.type = type;
    req.reserved = 0;
    req.sector = sector;
    req_status = 0xff;
    descs[0] = (struct desc){(u64)&req, sizeof req, 1 /* NEXT */, 1};
    if (type == 4) {
        descs[0].next = 2;
    } else {
        descs[1] = (struct desc){(u64)&sector_buf, 512, (u16)(1 | (type == 0 ? 2 : 0)), 2};
    }
    descs[2] = (struct desc){(u64)&req_status, 1, 2 /* WRITE */, 0};
    u16 want = used.idx + 1;
    avail.ring[avail_idx % QSIZE] = 0;
    barrier();
    avail.idx = ++avail_idx;
    barrier();
    mmio_write(blk, VIRTIO_QUEUE_NOTIFY, 0);
    while (*(volatile u16 *)&used.idx != want) barrier();
    mmio_write(blk, VIRTIO_INTERRUPT_ACK, 1);
    if (req_status != 0) fail("a disk request failed");
}

static void print_status(void) {
    puts("counter=");
    putu(status->counter);
    puts(" records=");
    putu(status->records);
    puts(" dirtied=");
    putu(status->pages_dirtied);
    puts(" ms=");
    putu(status->clock_ms);
    puts("\n");
}

__attribute__((section(".text.entry"), noreturn)) void _start(struct guest_params *p) {
    if (p->magic != PARAMS_MAGIC) {
        puts("test guest: bad parameters\n");
        for (;;) __asm__ volatile("cli; hlt");
    }
    status->magic = STATUS_MAGIC;
    clock_last = inl(CLOCK_PORT);
    clock_ms = clock_last;
    blk = p->virtio_blk_base;
    u64 sectors = disk_init(blk);
    status->disk_sectors = sectors;
    /* Records are at sectors 1, 2, ...: go on after the last one a previous run wrote. */
    u64 next = 0;
    for (; next + 1 < sectors; next++) {
        disk_io(0, next + 1);
        if (sector_buf.magic != RECORD_MAGIC || sector_buf.number != next) break;
    }
    status->records = next;
    puts("test guest: started, ");
    putu(sectors);
    puts(" disk sectors, ");
    putu(next);
    puts(" records on disk\n");

    u64 pages = p->dirty_len / PAGE;
    u64 start = clock_now(), last_record = start, last_print = start;
    u64 dirtied_here = 0;
    for (;;) {
        status->counter++;
        u64 now = clock_now();
        status->clock_ms = now;
        u64 due = 0;
        if (pages) {
            due = p->dirty_bytes_per_s * (now - start) / 1000 / PAGE;
            for (int i = 0; i < 64 && dirtied_here < due; i++, dirtied_here++) {
                volatile u64 *page = (volatile u64 *)(p->dirty_base + (dirtied_here % pages) * PAGE);
                *page = status->counter;
            }
            status->pages_dirtied = dirtied_here;
        }
        if (p->record_every_ms && now - last_record >= p->record_every_ms && status->records + 1 < sectors) {
            last_record = now;
            for (unsigned i = 0; i < sizeof sector_buf.pad; i++) sector_buf.pad[i] = 0;
            sector_buf.magic = RECORD_MAGIC;
            sector_buf.number = status->records;
            sector_buf.counter = status->counter;
            sector_buf.clock_ms = now;
            disk_io(1, status->records + 1);
            disk_io(4, 0);
            status->records++;
        }
        if (p->print_every_ms && now - last_print >= p->print_every_ms) {
            last_print = now;
            print_status();
        }
        /* Nothing more is due: wait without spinning, as a real guest halts until
         * its next timer tick. 10 ms: every exit to the VMM costs host CPU (much of
         * it under nested KVM), and the dirtying, records and prints keep their
         * rates, only in bursts. */
        if (dirtied_here >= due) outl(IDLE_PORT, IDLE_MS);
    }
}
