//! Routes glommio's io_uring ring creation through `ring_setup::__wrap_io_uring_queue_init_params`
//! (GNU ld `--wrap`), which asks the kernel for cooperative task running. See src/ring_setup.rs.

fn main() {
    println!("cargo:rerun-if-changed=build.rs");
    if std::env::var("CARGO_CFG_TARGET_OS").as_deref() == Ok("linux") {
        println!("cargo:rustc-link-arg=-Wl,--wrap=io_uring_queue_init_params");
    }
}
