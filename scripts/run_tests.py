"""Run the trial suite and end with the line CI reads: "N passed, N failed".

Trial's own summary stays above it. Under CI (CI=true) a skipped test counts
as failed: every test must run there, lab tests included.
"""

import os
import sys

from twisted.scripts import trial


# Files of the host no test may change (nodes in the lab manage their own
# namespace's copies): checked byte for byte around the whole suite.
HOST_FILES = ("/etc/resolv.conf",)


def read_host_files():
    found = {}
    for path in HOST_FILES:
        try:
            with open(path, "rb") as f:
                found[path] = f.read()
        except OSError:
            found[path] = None
    return found


def main(argv):
    # Import the checkout (tests/, wire/) the way "python -m twisted.trial" would.
    sys.path.insert(0, os.getcwd())
    host_before = read_host_files()
    config = trial.Options()
    config.parseOptions(argv)
    trial._initialDebugSetup(config)
    runner = trial._makeRunner(config)
    suite = trial._getSuite(config)
    result = runner.run(suite)

    failed = len(result.failures) + len(result.errors) + len(result.unexpectedSuccesses)
    host_after = read_host_files()
    for path in HOST_FILES:
        if host_after[path] != host_before[path]:
            print(f"the suite changed the host's {path}: a test touched the host's resolver (counted as a failure)")
            failed += 1
    skipped = len(result.skips)
    passed = result.successes + len(result.expectedFailures)
    if os.environ.get("CI") and skipped:
        print(f"CI: {skipped} test(s) skipped; every test must run in CI:")
        for test, reason in result.skips:
            print(f"  {test.id()}: {reason}")
        failed += skipped
        skipped = 0
    line = f"{passed} passed, {failed} failed"
    if skipped:
        line += f", {skipped} skipped"
    sys.stdout.flush()
    print(line)
    return 0 if failed == 0 and passed > 0 else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
