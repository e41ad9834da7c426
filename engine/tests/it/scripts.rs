//! One test per script in `engine/testdata/`; a check that none is left out.

use std::path::{Path, PathBuf};

fn testdata() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("testdata")
}

fn run(name: &str) {
    let mut env = crate::interaction::Env::default();
    crate::datadriven::run_file(&testdata().join(format!("{name}.txt")), |c| env.handle(c));
}

macro_rules! scripts {
    ($($name:ident),* $(,)?) => {
        $(
            #[test]
            fn $name() {
                run(stringify!($name));
            }
        )*

        #[test]
        fn every_script_has_a_test() {
            let listed = [$(stringify!($name)),*];
            for entry in std::fs::read_dir(testdata()).expect("engine/testdata exists") {
                let path = entry.expect("entry").path();
                let stem = path.file_stem().and_then(|s| s.to_str()).expect("utf-8 name").to_string();
                assert!(listed.contains(&stem.as_str()), "{} has no test in scripts.rs", path.display());
            }
        }
    };
}

scripts! {
    async_persist,
    backtracking,
    bad_input,
    bootstrap,
    campaign,
    check_quorum,
    confchange,
    confchange_liveness,
    election_timeout,
    election_timer,
    figure8,
    forwarding,
    lease_read,
    overload,
    prevote,
    read_index,
    replication,
    restart,
    snapshot,
    stale_candidate,
    transfer,
}
