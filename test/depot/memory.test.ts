import * as Memory from "../../src/depot/memory.ts"
import { depotStoreConformance } from "./conformance.ts"

depotStoreConformance("memory", () => Memory.layer)
