from nobusy.cli import main

main()
