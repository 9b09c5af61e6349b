import { defineConfig } from "vitest/config"

export default defineConfig({
  test: {
    testTimeout: 60_000,
    hookTimeout: 60_000,
    projects: [
      {
        extends: true,
        test: {
          name: "unit",
          include: ["test/**/*.test.ts"],
          exclude: ["test/**/*.int.test.ts", "test/**/*.fault.test.ts"],
        },
      },
      {
        extends: true,
        test: { name: "integration", include: ["test/**/*.int.test.ts"], fileParallelism: true },
      },
      {
        extends: true,
        test: { name: "fault", include: ["test/**/*.fault.test.ts"], fileParallelism: false },
      },
    ],
  },
})
