//! The driver conformance suite: every case a graph driver — built in or a
//! third party's — is held to, written against the [`graphdriver::Driver`]
//! trait alone.
//!
//! Why it is shaped this way:
//! - Cases are plain async functions over a small harness API ([`Cx`],
//!   [`ops`], [`manifest`], [`tars`], [`chain`]), one file per case group
//!   in `src/cases/`, so a case reads like the scenario it checks.
//! - A [`Factory`] makes a fresh driver per case in a fresh `root/`, next to
//!   a `work/` play area; nothing leaks between cases, and each case's
//!   teardown holds the driver to `cleanup()` and `remove()`.
//! - The same cases run two ways: [`run_suite`] (what `layerctl conformance`
//!   calls; its [`Report`] ends with `N passed, M failed, K skipped`), and
//!   [`stamp!`], which stamps every case into a driver's `cargo test` as a
//!   named `#[test]`.
//! - A failing case reports the differences it found and dumps the trees of
//!   the layers it was looking at. A skip carries its reason and is counted.
//! - vfs is the oracle: every case passes there first.
//!
//! `docs/conformance.md` says what each case checks and how to run the
//! suite against your own driver.

#[doc(hidden)]
pub mod cases;
pub mod dockerd;
mod factory;
pub mod harness;
mod report;
mod run;

pub use factory::{BuiltinFactory, Factory, FnFactory, default_parent_dir, from_fn};
pub use harness::{CaseResult, Cx, Skip, chain, manifest, ops, skip, tars};
pub use report::{CaseReport, Outcome, Report};
pub use run::{Case, CaseFn, cases, run_case, run_suite, run_suite_with, stamp_run};

/// The case list, in run order, handed to `$crate::__case_list!` with a
/// mode (`table` or `stamp`). The one place a new case is registered.
#[doc(hidden)]
#[macro_export]
macro_rules! __for_each_case {
    ($mode:ident $args:tt) => {
        $crate::__case_list! { $mode $args;
            graphtest::create_empty,
            graphtest::create_base,
            graphtest::create_snap,
            graphtest::deep_layer_read,
            graphtest::diff_apply,
            graphtest::changes,
            graphtest::diff_size,
            snapshots::layer_file_update,
            snapshots::remove_dir_in_lower_layer,
            snapshots::chown_nested,
            snapshots::dir_ownership_on_commit,
            snapshots::deleted_file_stays_deleted,
            snapshots::move_file_from_lower_layer,
            snapshots::rename,
            snapshots::root_permission,
            snapshots::layers_128,
            lifecycle::get_put_counted,
            lifecycle::remove_twice,
            lifecycle::unknown_ids,
            lifecycle::create_existing,
            lifecycle::create_missing_parent,
            lifecycle::recreate_after_remove,
            lifecycle::remove_mounted,
            lifecycle::cleanup_keeps_layers,
            lifecycle::storage_opts,
            lifecycle::ids_and_metadata,
            parents::child_isolation,
            parents::remove_parent_with_child,
            parents::remove_intermediate,
            parents::remove_while_other_mounted,
            parents::readonly_view,
            archive::special_files,
            archive::xattrs,
            archive::hardlinks,
            archive::sparse_files,
            archive::mtimes,
            archive::diff_getter,
            archive::hostile_tar,
            concurrency::concurrent_get_put,
            concurrency::concurrent_create,
            concurrency::concurrent_diff,
            store::store_deep_chain_export,
            store::store_rw_commit,
        }
    };
}

#[doc(hidden)]
#[macro_export]
macro_rules! __case_list {
    (table (); $($group:ident :: $case:ident,)*) => {
        &[$(
            $crate::Case {
                group: stringify!($group),
                name: stringify!($case),
                run: |cx| Box::pin($crate::cases::$group::$case(cx)),
            },
        )*]
    };
    (stamp ($factory:expr); $($group:ident :: $case:ident,)*) => {
        $(
            #[test]
            fn $case() {
                $crate::stamp_run(&$factory, stringify!($case));
            }
        )*
    };
}

/// Stamp every case into the calling test binary as `mod $name { #[test] fn
/// create_empty() … }`. `$factory` is an expression of a type implementing
/// [`Factory`], evaluated once per test:
///
/// ```no_run
/// conformance::stamp!(vfs, conformance::BuiltinFactory::new("vfs"));
/// ```
#[macro_export]
macro_rules! stamp {
    ($name:ident, $factory:expr) => {
        mod $name {
            #[allow(unused_imports)]
            use super::*;
            $crate::__for_each_case!(stamp($factory));
        }
    };
}

static CASES: &[Case] = __for_each_case!(table());

#[cfg(test)]
mod tests {
    use std::collections::HashSet;

    use super::*;

    #[test]
    fn case_names_are_unique() {
        let names: HashSet<&str> = cases().iter().map(|c| c.name).collect();
        assert_eq!(names.len(), cases().len());
    }
}
