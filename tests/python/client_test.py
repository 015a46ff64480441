#!/usr/bin/env python3
"""Drives a running Concord coordinator from Python over gRPC, with stubs generated at run time
from the project's proto by grpcio-tools: a 2PC commit and a 2PC abort (a bound crossed), a saga
that commits and a saga that is compensated, a bad request, and the committed listing.

Usage:
    python client_test.py --coordinator 127.0.0.1:PORT --participants alpha,beta \
        --proto-dir /work/main/proto/proto

The coordinator must know both participants by those names. Prints one `ok case X: ...` line per
case and exits 0; on the first failure prints what differed and exits 1. Every check is explicit
(no bare `assert`), so `python -O` checks as much. Needs only the standard library, grpcio,
grpcio-tools and protobuf. The keys it touches carry a per-run tag, so a rerun against the same
cluster starts from absent (zero) counters again.
"""

import argparse
import os
import shutil
import sys
import tempfile
import time
import uuid

PROTO = "concord/v1/concord.proto"


class CheckFailed(Exception):
    """A case saw something other than what it expected."""


def check(condition, message):
    if not condition:
        raise CheckFailed(message)


def generate_stubs(proto_dir, out_dir):
    """Runs grpc_tools.protoc on concord/v1/concord.proto into out_dir; returns the modules
    (concord_pb2, concord_pb2_grpc)."""
    from grpc_tools import protoc

    proto_path = os.path.join(proto_dir, PROTO)
    if not os.path.isfile(proto_path):
        raise CheckFailed("no %s under --proto-dir %s" % (PROTO, proto_dir))
    # grpc_tools ships the well-known types (google/protobuf/*.proto); concord.proto imports none
    # today, but an import added later should still resolve.
    args = [
        "grpc_tools.protoc",
        "-I" + proto_dir,
        "--python_out=" + out_dir,
        "--grpc_python_out=" + out_dir,
    ]
    well_known = _grpc_tools_include()
    if well_known:
        args.insert(2, "-I" + well_known)
    args.append(PROTO)
    status = protoc.main(args)
    if status != 0:
        raise CheckFailed("grpc_tools.protoc %s exited %d" % (" ".join(args[1:]), status))
    # protoc writes concord/v1/concord_pb2.py and concord_pb2_grpc.py, and the latter imports
    # `from concord.v1 import concord_pb2`: make both directories regular packages.
    for package in ("concord", os.path.join("concord", "v1")):
        open(os.path.join(out_dir, package, "__init__.py"), "a").close()
    sys.path.insert(0, out_dir)
    from concord.v1 import concord_pb2, concord_pb2_grpc

    return concord_pb2, concord_pb2_grpc


def _grpc_tools_include():
    """grpc_tools' bundled include directory (well-known types), or None."""
    try:
        from importlib import resources

        path = str(resources.files("grpc_tools").joinpath("_proto"))
    except (ImportError, AttributeError, TypeError):
        try:
            import pkg_resources

            path = pkg_resources.resource_filename("grpc_tools", "_proto")
        except Exception:  # pylint: disable=broad-except
            return None
    return path if os.path.isdir(path) else None


class Client:
    """The coordinator stub with a timeout on every call, and helpers to build requests."""

    def __init__(self, pb, pb_grpc, channel, timeout, participants, run):
        self.pb = pb
        self.stub = pb_grpc.CoordinatorStub(channel)
        self.timeout = timeout
        self.p0, self.p1 = participants[0], participants[1]
        self.key_a = ("py:a:" + run).encode()
        self.key_b = ("py:b:" + run).encode()

    # Names of enum values, for messages (an unknown number prints as the number).
    def name(self, enum, value):
        try:
            return enum.Name(value)
        except ValueError:
            return str(value)

    def state(self, value):
        return self.name(self.pb.TxnState, value)

    def outcome(self, value):
        return self.name(self.pb.Outcome, value)

    def kind(self, value):
        return self.name(self.pb.AbortCause.Kind, value)

    def describe(self, info):
        """One line of a TransactionInfo, with enum names."""
        branches = ", ".join(
            "%s:%s%s"
            % (
                b.participant,
                self.name(self.pb.BranchState, b.state),
                " (saga step)" if b.saga_step else "",
            )
            for b in info.branches
        )
        return "state=%s outcome=%s mode=%s branches=[%s]" % (
            self.state(info.state),
            self.outcome(info.outcome),
            self.name(self.pb.TxnMode, info.mode),
            branches,
        )

    def add(self, key, delta, lower_bound=None):
        counter = self.pb.CounterAdd(key=key, delta=delta)
        if lower_bound is not None:
            counter.lower_bound = lower_bound
        return self.pb.Operation(counter_add=counter)

    def branch(self, participant, *operations):
        return self.pb.Branch(participant=participant, operations=list(operations))

    def submit(self, txn_id, mode, branches):
        request = self.pb.SubmitRequest(txn_id=txn_id, mode=mode, branches=branches)
        return self.stub.Submit(request, timeout=self.timeout)

    def get(self, txn_id):
        request = self.pb.GetTransactionRequest(txn_id=txn_id)
        response = self.stub.GetTransaction(request, timeout=self.timeout)
        check(response.HasField("transaction"), "GetTransaction(%s) has no transaction" % txn_id)
        return response.transaction

    def poll(self, txn_id, seconds, done):
        """GetTransaction until done(info) holds or `seconds` pass; returns the last info and
        whether done held."""
        deadline = time.monotonic() + seconds
        while True:
            info = self.get(txn_id)
            if done(info):
                return info, True
            if time.monotonic() >= deadline:
                return info, False
            time.sleep(0.05)

    def list_ids(self, state):
        """Every txn_id ListTransactions returns for `state`, over all pages, and the states
        the listed transactions carry."""
        ids, states, token, pages = [], set(), "", 0
        while True:
            request = self.pb.ListTransactionsRequest(state=state, page_size=1000, page_token=token)
            response = self.stub.ListTransactions(request, timeout=self.timeout)
            ids.extend(t.txn_id for t in response.transactions)
            states.update(t.state for t in response.transactions)
            pages += 1
            check(
                response.next_page_token != token or not response.next_page_token,
                "ListTransactions returned the same page token %r twice" % token,
            )
            token = response.next_page_token
            if not token:
                return ids, states
            check(pages < 10000, "ListTransactions: more than 10,000 pages")


def txn_id(kind):
    return "py-%s-%s" % (kind, uuid.uuid4().hex)


def case_a(c, ids):
    """2PC commit: +100 on each participant."""
    pb = c.pb
    tid = txn_id("2pc")
    response = c.submit(
        tid,
        pb.TXN_MODE_TWO_PHASE,
        [c.branch(c.p0, c.add(c.key_a, 100)), c.branch(c.p1, c.add(c.key_b, 100))],
    )
    check(response.txn_id == tid, "Submit answered txn_id %r, not %r" % (response.txn_id, tid))
    check(
        response.outcome == pb.OUTCOME_COMMITTED,
        "outcome %s, not OUTCOME_COMMITTED (abort: %s)"
        % (c.outcome(response.outcome), response.abort),
    )
    seen = []

    def committed(info):
        seen.append(info.state)
        check(
            info.state in (pb.TXN_STATE_COMMITTING, pb.TXN_STATE_COMMITTED),
            "GetTransaction state %s, not COMMITTING or COMMITTED" % c.state(info.state),
        )
        return info.state == pb.TXN_STATE_COMMITTED

    info, done = c.poll(tid, 5, committed)
    check(done, "state still %s after 5 s, not TXN_STATE_COMMITTED" % c.state(info.state))
    check(info.txn_id == tid, "GetTransaction answered txn_id %r" % info.txn_id)
    check(
        info.outcome == pb.OUTCOME_COMMITTED,
        "GetTransaction outcome %s, not OUTCOME_COMMITTED" % c.outcome(info.outcome),
    )
    check(len(info.branches) == 2, "not 2 branches: %s" % c.describe(info))
    check(
        [b.participant for b in info.branches] == [c.p0, c.p1],
        "branch participants %s" % [b.participant for b in info.branches],
    )
    ids["A"] = tid
    return "2PC %s committed; GetTransaction: COMMITTED with 2 branches" % tid


def case_b(c, ids):
    """2PC abort: a debit that would cross the lower bound makes participant 0 vote NO."""
    pb = c.pb
    tid = txn_id("2pc-abort")
    response = c.submit(
        tid,
        pb.TXN_MODE_TWO_PHASE,
        [
            c.branch(c.p0, c.add(c.key_a, -1000, lower_bound=0)),
            c.branch(c.p1, c.add(c.key_b, 1000)),
        ],
    )
    check(
        response.outcome == pb.OUTCOME_ABORTED,
        "outcome %s, not OUTCOME_ABORTED" % c.outcome(response.outcome),
    )
    check(response.HasField("abort"), "ABORTED without an abort cause")
    abort = response.abort
    check(
        abort.kind == pb.AbortCause.KIND_VOTE_NO,
        "abort.kind %s, not KIND_VOTE_NO (%s)" % (c.kind(abort.kind), abort.message),
    )
    check(
        abort.vote_reason == pb.NO_REASON_BOUND_CROSSED,
        "abort.vote_reason %s, not NO_REASON_BOUND_CROSSED"
        % c.name(pb.NoReason, abort.vote_reason),
    )
    check(abort.participant == c.p0, "abort.participant %r, not %r" % (abort.participant, c.p0))
    ids["B"] = tid
    return "2PC %s aborted: %s voted NO, BOUND_CROSSED (%s)" % (
        tid,
        abort.participant,
        abort.message,
    )


def case_c(c, ids):
    """Saga commit: -10 on participant 0 (bounded at 0), +10 on participant 1."""
    pb = c.pb
    tid = txn_id("saga")
    response = c.submit(
        tid,
        pb.TXN_MODE_SAGA,
        [c.branch(c.p0, c.add(c.key_a, -10, lower_bound=0)), c.branch(c.p1, c.add(c.key_b, 10))],
    )
    check(
        response.outcome == pb.OUTCOME_COMMITTED,
        "outcome %s, not OUTCOME_COMMITTED (abort: %s)"
        % (c.outcome(response.outcome), response.abort),
    )
    # Committing a saga tells each executed step to forget its undo: COMMITTING until then.
    info, done = c.poll(tid, 5, lambda i: i.state == pb.TXN_STATE_COMMITTED)
    check(done, "state still %s after 5 s, not TXN_STATE_COMMITTED" % c.state(info.state))
    check(
        info.outcome == pb.OUTCOME_COMMITTED,
        "GetTransaction outcome %s, not OUTCOME_COMMITTED" % c.outcome(info.outcome),
    )
    check(
        info.mode == pb.TXN_MODE_SAGA,
        "GetTransaction mode %s, not TXN_MODE_SAGA" % c.name(pb.TxnMode, info.mode),
    )
    check(len(info.branches) == 2, "not 2 branches: %s" % c.describe(info))
    check(
        all(b.saga_step for b in info.branches),
        "not every branch is a saga step: %s" % c.describe(info),
    )
    ids["C"] = tid
    return "saga %s committed; GetTransaction: SAGA, both branches saga steps" % tid


def case_d(c, ids):
    """Saga compensated: participant 0's step executes, participant 1's fails (bound), so
    participant 0's step is compensated."""
    pb = c.pb
    tid = txn_id("saga-comp")
    response = c.submit(
        tid,
        pb.TXN_MODE_SAGA,
        [
            c.branch(c.p0, c.add(c.key_a, -1, lower_bound=0)),
            c.branch(c.p1, c.add(c.key_b, -1000000, lower_bound=0)),
        ],
    )
    check(
        response.outcome == pb.OUTCOME_ABORTED,
        "outcome %s, not OUTCOME_ABORTED" % c.outcome(response.outcome),
    )
    check(response.HasField("abort"), "ABORTED without an abort cause")
    abort = response.abort
    check(
        abort.kind == pb.AbortCause.KIND_STEP_FAILED,
        "abort.kind %s, not KIND_STEP_FAILED (%s)" % (c.kind(abort.kind), abort.message),
    )

    def compensated(info):
        return (
            info.state == pb.TXN_STATE_ABORTED
            and len(info.branches) >= 1
            and info.branches[0].state == pb.BRANCH_STATE_COMPENSATED
        )

    info, done = c.poll(tid, 10, compensated)
    check(
        done,
        "after 10 s: state %s, first branch %s; wanted TXN_STATE_ABORTED and "
        "BRANCH_STATE_COMPENSATED (%s)"
        % (
            c.state(info.state),
            c.name(pb.BranchState, info.branches[0].state) if info.branches else "missing",
            c.describe(info),
        ),
    )
    check(info.outcome == pb.OUTCOME_ABORTED, "GetTransaction outcome %s" % c.outcome(info.outcome))
    ids["D"] = tid
    return "saga %s aborted (STEP_FAILED at %s); %s's step compensated" % (
        tid,
        abort.participant,
        c.p0,
    )


def case_e(c, ids):
    """An unknown participant is INVALID_ARGUMENT naming branches[0].participant."""
    import grpc

    pb = c.pb
    tid = txn_id("bad")
    try:
        response = c.submit(
            tid, pb.TXN_MODE_TWO_PHASE, [c.branch("no-such-participant", c.add(c.key_a, 1))]
        )
    except grpc.RpcError as error:
        check(
            error.code() == grpc.StatusCode.INVALID_ARGUMENT,
            "status %s (%s), not INVALID_ARGUMENT" % (error.code(), error.details()),
        )
        details = error.details() or ""
        check(
            "branches[0].participant" in details,
            "details %r do not name branches[0].participant" % details,
        )
        return "unknown participant: INVALID_ARGUMENT (%s)" % details
    raise CheckFailed(
        "Submit with an unknown participant answered %s, not INVALID_ARGUMENT"
        % c.outcome(response.outcome)
    )


def case_f(c, ids):
    """ListTransactions(COMMITTED) lists the committed ids of cases A and C, and not the
    aborted ones of B and D."""
    pb = c.pb
    wanted = {ids["A"], ids["C"]}
    deadline = time.monotonic() + 5
    while True:
        listed, states = c.list_ids(pb.TXN_STATE_COMMITTED)
        missing = wanted - set(listed)
        if not missing or time.monotonic() >= deadline:
            break
        time.sleep(0.05)
    check(
        not missing,
        "ListTransactions(COMMITTED) lacks %s (listed %d)" % (sorted(missing), len(listed)),
    )
    check(
        states <= {pb.TXN_STATE_COMMITTED},
        "ListTransactions(COMMITTED) listed states %s" % sorted(c.state(s) for s in states),
    )
    aborted = {ids["B"], ids["D"]} & set(listed)
    check(not aborted, "ListTransactions(COMMITTED) lists aborted %s" % sorted(aborted))
    check(len(listed) == len(set(listed)), "ListTransactions(COMMITTED) lists an id twice")
    return "ListTransactions(COMMITTED) lists A and C among %d" % len(listed)


CASES = [("A", case_a), ("B", case_b), ("C", case_c), ("D", case_d), ("E", case_e), ("F", case_f)]


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--coordinator", required=True, help="HOST:PORT of the coordinator")
    parser.add_argument(
        "--participants", required=True, help="two participant names, comma-separated"
    )
    parser.add_argument(
        "--proto-dir", required=True, help="the include root holding concord/v1/concord.proto"
    )
    parser.add_argument("--timeout", type=float, default=10.0, help="seconds per RPC")
    args = parser.parse_args()
    participants = [p for p in args.participants.split(",") if p]
    if len(participants) < 2:
        print("FAIL: --participants needs two names, got %r" % args.participants, file=sys.stderr)
        return 1

    try:
        import grpc
    except ImportError as error:
        print(
            "FAIL: cannot import grpc (%s): pip install grpcio grpcio-tools" % error,
            file=sys.stderr,
        )
        return 1

    out_dir = tempfile.mkdtemp(prefix="concord-py-stubs-")
    try:
        try:
            pb, pb_grpc = generate_stubs(os.path.abspath(args.proto_dir), out_dir)
        except CheckFailed as error:
            print("FAIL: generating stubs: %s" % error, file=sys.stderr)
            return 1
        except Exception as error:  # pylint: disable=broad-except
            print(
                "FAIL: generating or importing stubs: %s: %s" % (type(error).__name__, error),
                file=sys.stderr,
            )
            return 1
        print(
            "stubs generated from %s (grpcio %s)" % (PROTO, grpc.__version__),
            flush=True,
        )

        with grpc.insecure_channel(args.coordinator) as channel:
            try:
                grpc.channel_ready_future(channel).result(timeout=args.timeout)
            except grpc.FutureTimeoutError:
                print(
                    "FAIL: could not connect to the coordinator at %s within %.0f s"
                    % (args.coordinator, args.timeout),
                    file=sys.stderr,
                )
                return 1
            run = uuid.uuid4().hex[:12]
            client = Client(pb, pb_grpc, channel, args.timeout, participants, run)
            ids = {}
            for name, case in CASES:
                try:
                    summary = case(client, ids)
                except CheckFailed as error:
                    print("FAIL case %s: %s" % (name, error), file=sys.stderr)
                    return 1
                except grpc.RpcError as error:
                    print(
                        "FAIL case %s: RPC failed: %s: %s" % (name, error.code(), error.details()),
                        file=sys.stderr,
                    )
                    return 1
                print("ok case %s: %s" % (name, summary), flush=True)
        print("all %d cases passed" % len(CASES), flush=True)
        return 0
    finally:
        shutil.rmtree(out_dir, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
