//! A full disk, for real: the data directory on a small tmpfs, filled by another file.
//! Writes are refused with STORAGE_FULL while reads go on, a restart on the full disk
//! keeps its views, and writes resume by themselves once space is freed; nothing that
//! was acknowledged is lost. Mounting needs root, which the test machines and CI have.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use common::*;

/// A small tmpfs, unmounted when dropped.
struct SmallDisk {
    at: PathBuf,
    _dir: tempfile::TempDir,
}

impl SmallDisk {
    fn mount(bytes: u64) -> SmallDisk {
        let dir = tempfile::tempdir().unwrap();
        let at = dir.path().join("disk");
        std::fs::create_dir(&at).unwrap();
        let out =
            Command::new("mount").args(["-t", "tmpfs", "-o", &format!("size={bytes}")]).arg("tmpfs").arg(&at).output();
        let out = out.expect("mount(8) runs");
        assert!(
            out.status.success(),
            "this test mounts a tmpfs, which needs root: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        SmallDisk { at, _dir: dir }
    }

    fn free(&self) -> u64 {
        let st = rustix::fs::statvfs(&self.at).unwrap();
        st.f_bavail * st.f_frsize
    }
}

impl Drop for SmallDisk {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.at).status();
    }
}

/// Takes all but `leave` bytes of the disk's free space with a file of its own.
fn fill(disk: &SmallDisk, leave: u64) -> PathBuf {
    let path = disk.at.join("filler");
    let file = std::fs::File::create(&path).unwrap();
    let len = disk.free().saturating_sub(leave);
    rustix::fs::fallocate(&file, rustix::fs::FallocateFlags::empty(), 0, len).unwrap();
    path
}

fn get(url: &str) -> (u16, String) {
    match ureq::get(url).call() {
        Ok(r) => (r.status(), r.into_string().unwrap()),
        Err(ureq::Error::Status(s, r)) => (s, r.into_string().unwrap()),
        Err(e) => panic!("{url}: {e}"),
    }
}

const ENV: [(&str, &str); 2] =
    [("PAYGATE_STORAGE__SEGMENT_BYTES", "65536"), ("PAYGATE_STORAGE__RESERVE_BYTES", "5242880")];

fn start(data: &Path) -> BinNode {
    BinNode::start(data, &ENV)
}

#[test]
fn a_full_disk_refuses_writes_keeps_reads_and_recovers_by_itself() {
    let disk = SmallDisk::mount(32 << 20);
    let data = disk.at.join("data");
    let node = start(&data);
    let c = node.client();
    let first = c.pay("FULL-0", "1.00");
    assert_eq!(first.code(), "SUCCESS", "{first:?}");
    let mut acked = vec![("FULL-0".to_owned(), first.data("pay_order_no").to_owned())];
    // Less than a segment and the reserve (5 MiB) stays free: the next segment cannot be
    // taken, while the views and the providers' stores (sled, which takes its log in
    // 512 KiB pieces, also when it opens) still have the room the reserve is kept for.
    let filler = fill(&disk, 4 << 20);

    let mut refused = None;
    for i in 1..5000 {
        let order_no = format!("FULL-{i}");
        let a = c.pay(&order_no, "1.00");
        if a.code() == "SUCCESS" {
            acked.push((order_no, a.data("pay_order_no").to_owned()));
        } else {
            refused = Some((order_no, a));
            break;
        }
    }
    let (refused_no, a) = refused.expect("the disk filled up");
    assert_eq!((a.status, a.code()), (507, "STORAGE_FULL"), "{a:?}");
    assert!(acked.len() > 10, "segment 0 took pays before the disk was full: {}", acked.len());
    // Reads go on; health says why writes do not.
    for (order_no, id) in &acked {
        assert_eq!(c.query_no(order_no).data("pay_order_no"), id.as_str());
    }
    let (status, body) = get(&format!("{}/healthz", node.url));
    assert!(status == 200 && body.contains("\"storage\":\"full\""), "{status} {body}");
    let (status, body) = get(&format!("{}/readyz", node.url));
    assert!(status == 503 && body.contains("full"), "{status} {body}");
    assert_eq!(metric(&node.url, "paygate_storage_full "), 1.0);
    assert_eq!(c.query_no(&refused_no).code(), "ORDER_NOT_FOUND", "a refused pay left no order");

    // A restart while the disk is still full keeps the views and serves reads.
    let views = views_inode(&data);
    node.kill9();
    let node = start(&data);
    let c = node.client();
    assert_eq!(views_inode(&data), views, "the views were kept, not rebuilt");
    for (order_no, id) in &acked {
        assert_eq!(c.query_no(order_no).data("pay_order_no"), id.as_str(), "{order_no} after restart");
    }
    assert_eq!(c.pay(&refused_no, "1.00").code(), "STORAGE_FULL");

    // Space comes back: writes resume without anyone touching the node.
    std::fs::remove_file(filler).unwrap();
    let resumed = eventually(Duration::from_secs(15), || {
        let a = c.pay(&refused_no, "1.00");
        (a.code() == "SUCCESS").then(|| a.data("pay_order_no").to_owned())
    })
    .expect("writes resumed once space was freed");
    acked.push((refused_no, resumed));
    assert_eq!(get(&format!("{}/readyz", node.url)).0, 200);
    node.kill9();
    let node = start(&data);
    let c = node.client();
    for (order_no, id) in &acked {
        assert_eq!(c.query_no(order_no).data("pay_order_no"), id.as_str(), "{order_no} lost");
    }
}

/// The views directory's inode: a rebuild deletes the directory and makes a new one.
fn views_inode(data: &Path) -> u64 {
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata(data.join("views")).unwrap().ino()
}
