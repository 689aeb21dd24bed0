# The two commands of the README: `make serve` and `make test`. Both set up everything first.
BUN := node_modules/.bin/bun
NATIVE_LIB := native/build/librmlx.so
SRCS := $(shell find src models -type f 2>/dev/null) package.json
PORT ?= 8080

.PHONY: all build deps native serve test typecheck clean

all: build

build: dist/rmlx

# Debian packages only when missing (g++ and make are on a fresh machine; nothing else is needed yet).
deps: node_modules/.installed

node_modules/.installed: package.json package-lock.json
	@command -v g++ >/dev/null || (apt-get update && apt-get install -y g++ make)
	npm ci --no-audit --no-fund
	@touch $@

native: $(NATIVE_LIB)

$(NATIVE_LIB): $(wildcard native/include/*.h native/cpu/*.cpp native/cpu/*.h) native/Makefile
	$(MAKE) -C native -j$$(nproc)

dist/rmlx: node_modules/.installed $(NATIVE_LIB) $(SRCS)
	@mkdir -p dist
	$(BUN) build --compile --minify-syntax --bytecode src/cli/main.ts src/engine/worker.ts --outfile dist/rmlx.tmp
	@mv dist/rmlx.tmp dist/rmlx

serve: build
	./dist/rmlx serve --port $(PORT)

# TypeScript strict over src, test and scripts (tsc only checks; bun runs the sources).
typecheck: node_modules/.installed
	node_modules/.bin/tsc --noEmit -p .

test: build typecheck
	$(BUN) test --timeout 60000 $(TEST_ARGS)

clean:
	rm -rf dist native/build
