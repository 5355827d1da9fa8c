"""Answer one ClientApp task with ``app-not-approved``, without installing or importing the app.

Started by the approved-apps gate (``medalloc node exec``) in place of ``flwr-clientapp`` for a
task whose app the data owner has not approved. It speaks to the SuperNode's Runtime API with
the task's token exactly as ``flwr-clientapp`` would (Flower's own ``pull_task_input`` /
``push_message`` / ``push_task_output``), checks the received FAB's SHA-256 once more, and
replies with a ``protocol.Refusal.APP_NOT_APPROVED`` error so the coordinator learns at once.
"""

from __future__ import annotations

import argparse
import hashlib
import logging

from medalloc_core.protocol import Refusal

logger = logging.getLogger("medalloc.node.refuse")


def refuse(
    *, runtime_api_address: str, token: str, insecure: bool, root_certificates: str | None, expected: str
) -> None:
    from flwr.app import Error, Message
    from flwr.common.constant import SubStatus
    from flwr.supercore.interceptors import RuntimeTokenHttpInterceptor, RuntimeVersionHttpInterceptor
    from flwr.supercore.retry import make_simple_http_retry_invoker
    from flwr.supercore.runtime import RuntimeHttpClient
    from flwr.supernode.runtime.run_clientapp import pull_task_input, push_message, push_task_output

    from medalloc_core.paths import read_regular_bytes

    # a regular file only (a FIFO would block the refusal for ever), at most 1 MiB of PEM
    certificates = read_regular_bytes(root_certificates, limit=1 << 20) if root_certificates else None
    client = RuntimeHttpClient.from_server_address(
        server_address=runtime_api_address,
        insecure=insecure,
        root_certificates=certificates,
        interceptors=[
            RuntimeVersionHttpInterceptor(component_name="flwr-clientapp"),
            RuntimeTokenHttpInterceptor(token),
        ],
        retry_invoker=make_simple_http_retry_invoker(),
    )
    try:
        message, context, run, fab = pull_task_input(client)
        actual = hashlib.sha256(fab.content).hexdigest()
        if expected and actual != expected:  # cannot happen with Flower's store; refused all the same
            logger.error("the FAB received hashes to %s, not the task's %s", actual, expected)
        detail = f"{Refusal.APP_NOT_APPROVED.slug}: this node's data owner has not approved app sha256 {actual}"
        push_message(
            client, Message(Error(code=int(Refusal.APP_NOT_APPROVED), reason=detail), reply_to=message), context
        )
        push_task_output(client, context, SubStatus.FAILED, detail)
        logger.warning("run %s: answered %s", run.run_id, detail)
    finally:
        client.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runtime-api-address", required=True)
    parser.add_argument("--token", required=True)
    parser.add_argument("--insecure", action="store_true")
    parser.add_argument("--root-certificates", default=None)
    parser.add_argument("--expected-sha256", default="")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    refuse(
        runtime_api_address=args.runtime_api_address,
        token=args.token,
        insecure=args.insecure,
        root_certificates=args.root_certificates,
        expected=args.expected_sha256,
    )


if __name__ == "__main__":
    main()
