from glimpse.extract.cli import main

if __name__ == "__main__":
    main()
