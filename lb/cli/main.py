def main(argv=None):
    raise SystemExit("lb: not built yet")
