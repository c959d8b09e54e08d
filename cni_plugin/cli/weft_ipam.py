"""weft-ipam: the CNI IPAM executable."""

from ..spec import dispatch


def main() -> None:
    from ..ipam.handlers import HANDLERS

    dispatch.main(HANDLERS)


if __name__ == "__main__":
    main()
