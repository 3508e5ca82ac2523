from gensynth._shadowing import check

check()  # python -m gensynth from the folder holding a clone named gensynth: say so

from gensynth.cli.main import main

if __name__ == "__main__":
    main()
