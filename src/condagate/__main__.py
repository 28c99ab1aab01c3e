from condagate.cli.main import main

main()
