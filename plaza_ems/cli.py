"""The ``plaza-ems`` command: check a site file, simulate a scenario, benchmark, run, reset a latch.

User errors (a broken file, an unknown id, missing data) print a clear message and exit non-zero
without a traceback: exit 1 for an invalid site or scenario, 2 for bad usage, 3 for missing data,
4 for a benchmark that could not measure (``bench ocpp``: the controller died, stations did not connect).
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

from controller.config import ConfigError, load_config
from controller.site import compile_site

EXIT_INVALID = 1
EXIT_USAGE = 2
EXIT_DATA = 3
EXIT_BENCH = 4


def _check_config(args: argparse.Namespace) -> int:
    from drivers.modbus.registry import check_devices

    loaded = load_config(args.file)
    from drivers.ocpp201.stations import compile_stations

    driver_issues = check_devices(loaded.config) + compile_stations(loaded.config)[1]
    if driver_issues:
        raise ConfigError(driver_issues, args.file)
    if loaded.config.mqtt is not None:
        from plaza_ems.cloud import cloud_config

        cloud_config(loaded.config.mqtt, args.file)
    if loaded.config.opcua is not None:
        from drivers.opcua.config import opcua_config

        opcua_config(loaded.config.opcua, args.file)
    site = compile_site(loaded.config)
    for warning in loaded.warnings:
        print(f"warning: {warning}", file=sys.stderr)
    summary = {
        "site": site.id,
        "valid": True,
        "levels": site.max_level,
        "nodes": len(site.nodes),
        "connectors": len(site.connectors),
        "ac_connectors": sum(1 for c in site.connectors if not c.dc),
        "dc_connectors": sum(1 for c in site.connectors if c.dc),
        "meters": len(site.config.meters),
        "batteries": len(site.batteries),
        "devices": len(loaded.config.devices),
        "warnings": [str(w) for w in loaded.warnings],
    }
    if args.json:
        print(json.dumps(summary))
    else:
        print(
            f"{args.file}: OK — site '{site.id}', {summary['levels']} levels, {summary['nodes']} nodes, "
            f"{summary['connectors']} connectors ({summary['ac_connectors']} AC, {summary['dc_connectors']} DC), "
            f"{summary['meters']} meters, {len(loaded.warnings)} warning(s)"
        )
    return 0


def _sim(args: argparse.Namespace) -> int:
    from hil.scenario import load_scenario
    from plaza_ems.simulate import simulate

    scenario = load_scenario(args.scenario)
    result = simulate(scenario, control=args.control)
    if args.json:
        print(json.dumps(result))
    else:
        print(
            f"{result['scenario']}: {result['simulated_s'] / 3600:.2f} h in {result['wall_s']:.1f} s wall, "
            f"{result['cycles']} cycles; max overload {result['max_overload_a']:.2f} A "
            f"(over limits {result['overload_s']:.0f} s in all); delivered {result['energy_delivered_kwh']:.1f} of "
            f"{result['energy_deliverable_kwh']:.1f} kWh deliverable ({result['sessions_met_target']}/"
            f"{result['sessions_total']} sessions met); peak import {result['peak_import_kw']:.1f} kW; "
            f"cost EUR {result['cost_eur']:.2f}; logic p99 {result['cycle']['logic_p99_ms']:.3f} ms"
        )
    return 0


def _bench(args: argparse.Namespace) -> int:
    from plaza_ems.bench import bench_scan

    if args.connectors < 1 or not 1 <= args.levels <= 5 or args.cycles < 1:
        print("error: need --connectors >= 1, --levels 1..5, --cycles >= 1", file=sys.stderr)
        return EXIT_USAGE
    result = bench_scan(args.connectors, args.levels, args.cycles)
    print(json.dumps(result) if args.json else " ".join(f"{k}={v}" for k, v in result.items()))
    return 0


def _bench_opcua(args: argparse.Namespace) -> int:
    from plaza_ems.bench_opcua import bench_opcua

    result = bench_opcua(args.connectors, args.cycles, args.change_pct)
    if args.json:
        print(json.dumps(result))
    else:
        for key, value in result.items():
            print(f"{key:>26}  {value}")
    return 0


def _optimizer_command(module: str, prog: str) -> Callable[[argparse.Namespace], int]:
    def run(args: argparse.Namespace) -> int:
        import importlib

        command = importlib.import_module(module)
        parser = argparse.ArgumentParser(prog=prog)
        command.add_arguments(parser)
        result: int = command.main(parser.parse_args(args.options))
        return result

    return run


def _opcua_password(args: argparse.Namespace) -> int:
    import getpass

    from drivers.opcua.config import hash_password

    password = getpass.getpass("password: ") if args.password is None else args.password
    if len(password) < 8:
        print("error: use at least 8 characters", file=sys.stderr)
        return 2
    print(hash_password(password))
    return 0


def _bench_ocpp(args: argparse.Namespace) -> int:
    from plaza_ems.bench_ocpp import BenchError, bench_ocpp, format_table

    if args.stations < 1 or args.duration < 5 or not 1024 <= args.port <= 65535:
        print("error: need --stations >= 1, --duration >= 5, --port 1024..65535", file=sys.stderr)
        return EXIT_USAGE
    try:
        result = bench_ocpp(args.stations, args.duration, args.port, Path(args.work_dir) if args.work_dir else None)
    except BenchError as err:
        print(f"error: bench ocpp: {err}", file=sys.stderr)
        return EXIT_BENCH
    print(json.dumps(result) if args.json else format_table(result))
    return 0


def _run(args: argparse.Namespace) -> int:
    if (args.scenario is None) == (args.config is None):
        print("error: give exactly one of --scenario (in-process plant) or --config (field devices)", file=sys.stderr)
        return EXIT_USAGE
    if args.config is not None:
        from plaza_ems.fieldrun import run_field

        return run_field(
            config_path=args.config,
            duration_s=args.duration,
            state_dir=Path(args.state_dir),
            stats_json=Path(args.stats_json) if args.stats_json else None,
            status_every_s=args.status_every,
        )
    from plaza_ems.realtime import run_realtime

    return run_realtime(
        scenario_path=args.scenario,
        duration_s=args.duration,
        state_dir=Path(args.state_dir),
        stats_json=Path(args.stats_json) if args.stats_json else None,
        status_every_s=args.status_every,
    )


def _hil(args: argparse.Namespace) -> int:
    import asyncio
    import signal

    from hil.scenario import load_scenario
    from plaza_ems.hilrun import HilPlaza

    scenario = load_scenario(args.scenario)
    if not scenario.site.devices:
        print(f"error: {args.scenario}: its site file has no devices section to serve", file=sys.stderr)
        return EXIT_INVALID

    async def serve() -> None:
        plaza = HilPlaza(scenario)
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        await plaza.start()
        if args.ready_file:
            Path(args.ready_file).write_text("ready\n", encoding="utf-8")  # noqa: ASYNC240 - once, tiny
        try:
            await plaza.run(stop, args.duration)
        finally:
            await plaza.stop()

    try:
        asyncio.run(serve())
    except OSError as err:
        print(f"error: cannot serve the simulated devices: {err}", file=sys.stderr)
        return EXIT_USAGE
    return 0


def _reset_latch(args: argparse.Namespace) -> int:
    from plaza_ems.inbox import InboxError, post_reset

    try:
        path = post_reset(Path(args.state_dir), args.latch, args.operator)
    except InboxError as err:
        print(f"error: {err}", file=sys.stderr)
        return EXIT_USAGE
    print(f"reset of '{args.latch}' requested by {args.operator}; the controller reads it from {path}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    from plaza_ems import demo as demo_command

    parser = argparse.ArgumentParser(prog="plaza-ems", description="EV charging plaza energy-management controller")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", required=True)

    check = sub.add_parser("check-config", help="validate a site file")
    check.add_argument("file")
    check.add_argument("--json", action="store_true")
    check.set_defaults(func=_check_config)

    sim = sub.add_parser("sim", help="replay a scenario in simulated time")
    sim.add_argument("scenario")
    sim.add_argument("--json", action="store_true", help="print one JSON object")
    sim.add_argument(
        "--control", choices=("ems", "none"), default="ems", help="'none' runs every charger flat out (baseline)"
    )
    sim.set_defaults(func=_sim)

    password = sub.add_parser("opcua-password", help="hash a password for a user of the opcua section")
    password.add_argument("--password", default=None, help="default: asked for without echo")
    password.set_defaults(func=_opcua_password)

    bench = sub.add_parser("bench", help="benchmarks")
    bench_sub = bench.add_subparsers(dest="bench", required=True)
    scan = bench_sub.add_parser("scan", help="time steps 2-5 of the scan cycle")
    scan.add_argument("--connectors", type=int, default=500)
    scan.add_argument("--levels", type=int, default=5)
    scan.add_argument("--cycles", type=int, default=2000)
    scan.add_argument("--json", action="store_true")
    scan.set_defaults(func=_bench)
    ocpp = bench_sub.add_parser(
        "ocpp", help="the controller as CSMS of N simulated OCPP 2.0.1 stations on 127.0.0.1 (own process)"
    )
    ocpp.add_argument("--stations", type=int, default=200)
    ocpp.add_argument("--duration", type=float, default=120.0, help="seconds the stations are served")
    ocpp.add_argument("--port", type=int, default=19900, help="the CSMS port on 127.0.0.1")
    ocpp.add_argument("--work-dir", default=None, help="keep the site file, scenario, log and stats here")
    ocpp.add_argument("--json", action="store_true")
    ocpp.set_defaults(func=_bench_ocpp)
    opcua = bench_sub.add_parser("opcua", help="the OPC UA publish step's cost to the scan cycle (server on 127.0.0.1)")
    opcua.add_argument("--connectors", type=int, default=500)
    opcua.add_argument("--cycles", type=int, default=300)
    opcua.add_argument("--change-pct", type=float, default=100.0, help="connectors whose current changes per cycle")
    opcua.add_argument("--json", action="store_true")
    opcua.set_defaults(func=_bench_opcua)
    # The optimiser's commands take their own options: parsed by their module, which needs numpy,
    # so that a site controller without the optimizer extra still starts.
    passthrough = (
        (bench_sub, "forecast", "mpc.forecast_eval", "plaza-ems bench forecast",
         "forecasters vs naive baselines on held-out real data (MAE); --help for its options"),
        (bench_sub, "mpc", "mpc.bench", "plaza-ems bench mpc",
         "build and re-solve the charge-plan QP (OSQP) and check it against HiGHS; --help for its options"),
        (sub, "optimizer", "mpc.service", "plaza-ems optimizer",
         "the cloud optimiser service: snapshots in over MQTT v5 shared subscriptions, plans out; --help"),
        (sub, "evaluate", "mpc.evaluate", "plaza-ems evaluate",
         "replay real ACN sessions: uncontrolled, fallback, MPC and the offline optimum; --help for its options"),
    )  # fmt: skip
    for parent, name, module, prog, text in passthrough:
        command = parent.add_parser(name, help=text, add_help=False)
        command.set_defaults(func=_optimizer_command(module, prog), passthrough=True)

    demo = sub.add_parser(
        "demo",
        help="broker, optimisers, the simulated plaza over Modbus TCP and the controller on 127.0.0.1 "
        "(further options go to 'plaza-ems run', e.g. --duration)",
    )
    demo_command.add_arguments(demo)
    demo.set_defaults(func=demo_command.main, passthrough=True)

    run = sub.add_parser(
        "run", help="run the controller in real time: field devices (--config) or an in-process plaza (--scenario)"
    )
    run.add_argument("--config", default=None, help="site file whose devices section names the field devices")
    run.add_argument("--scenario", default=None, help="scenario whose plant runs in-process (no wire)")
    run.add_argument("--duration", type=float, default=None, help="stop after this many seconds")
    run.add_argument("--state-dir", default="var/plaza-ems", help="where operator commands are read from")
    run.add_argument("--stats-json", default=None, help="write cycle statistics to this file every 10 s and at exit")
    run.add_argument("--status-every", type=float, default=10.0, help="seconds between status lines")
    run.set_defaults(func=_run)

    hil = sub.add_parser("hil", help="serve a scenario's simulated plaza over Modbus TCP on its devices' ports")
    hil.add_argument("scenario")
    hil.add_argument("--duration", type=float, default=None, help="stop after this many seconds")
    hil.add_argument("--ready-file", default=None, help="write this file once every device is listening")
    hil.set_defaults(func=_hil)

    reset = sub.add_parser("reset-latch", help="release a latched interlock (logged, needs an operator name)")
    reset.add_argument("latch", choices=("fire", "emergency_stop"))
    reset.add_argument("--operator", required=True)
    reset.add_argument("--state-dir", default="var/plaza-ems")
    reset.set_defaults(func=_reset_latch)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    from hil.data import DataError
    from hil.scenario import ScenarioError

    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    if extra and not getattr(args, "passthrough", False):
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    args.options = extra
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    # The drivers report every device failure once, with device and register; pymodbus' own
    # per-request lines would repeat them every cycle.
    logging.getLogger("pymodbus").setLevel(logging.DEBUG if args.verbose else logging.CRITICAL)
    # The ocpp library logs every frame at INFO; the CSMS logs what matters once, with the station id.
    logging.getLogger("ocpp").setLevel(logging.DEBUG if args.verbose else logging.WARNING)
    # asyncua logs every request at INFO; the maintenance server logs log-ins and method calls itself.
    logging.getLogger("asyncua").setLevel(logging.DEBUG if args.verbose else logging.WARNING)
    # gmqtt logs a lost connection with a traceback (also on a clean stop); the cloud link and the
    # optimiser log every loss once, with its reason.
    logging.getLogger("gmqtt").setLevel(logging.DEBUG if args.verbose else logging.ERROR)
    try:
        code: int = args.func(args)
    except (ConfigError, ScenarioError) as err:
        print(f"error: {err}", file=sys.stderr)
        return EXIT_INVALID
    except DataError as err:
        print(f"error: {err}", file=sys.stderr)
        return EXIT_DATA
    except KeyboardInterrupt:
        return 130
    return code


if __name__ == "__main__":
    sys.exit(main())
