//! The ricochet binary's link reads scripts/hot-functions.txt and two environment variables
//! (scripts/link-hot-first, the linker .cargo/config.toml names): a change to any of them
//! rebuilds the package, so that the next binary reflects it.
fn main() {
    println!("cargo:rerun-if-changed=scripts/hot-functions.txt");
    println!("cargo:rerun-if-changed=scripts/link-hot-first");
    println!("cargo:rerun-if-env-changed=RICOCHET_HOT_FIRST");
    println!("cargo:rerun-if-env-changed=RICOCHET_LINKER");
}
