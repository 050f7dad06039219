//! The ricochet binary's link reads scripts/hot-functions.txt (scripts/link-hot-first, the
//! linker .cargo/config.toml names): a new list or script takes effect on the next build.
fn main() {
    println!("cargo:rerun-if-changed=scripts/hot-functions.txt");
    println!("cargo:rerun-if-changed=scripts/link-hot-first");
}
